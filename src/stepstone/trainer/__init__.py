"""stepstone.trainer."""
