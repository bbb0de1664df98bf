"""Several Asterisk servers behind one ARI endpoint."""
