"""Stores other than the embedded index."""
