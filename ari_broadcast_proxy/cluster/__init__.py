"""Replicas: several proxies in front of one Asterisk share their broadcasts through Redis."""
