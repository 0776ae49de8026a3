"""Curation: near-duplicate signatures, global duplicate grouping and explained filters (recipes/curate.py)."""
