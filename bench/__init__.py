"""Benchmark: native StasisBroadcast vs ari-broadcast-proxy on one real Asterisk (bench/run)."""
