"""Explained misses and diffs: the nearest recordings and what differs."""
