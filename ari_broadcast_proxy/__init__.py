"""ari-broadcast-proxy: native StasisBroadcast behaviour for any stock Asterisk, as an ARI proxy."""

__version__ = "0.1.0"
