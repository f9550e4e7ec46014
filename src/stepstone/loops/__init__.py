"""stepstone.loops."""
