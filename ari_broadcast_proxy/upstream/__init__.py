"""Everything that talks to the upstream Asterisk: pooled REST and events WebSockets."""
