"""stepstone.core."""
