"""Broadcast and claim: the pure core and its I/O shell."""
