"""Differential test: random valid configurations run under stepstone and Lightning 2.6.6, observations compared."""
