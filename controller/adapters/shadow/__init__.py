"""Pairs of answers of two versions of the search stack, for the shadow judge (analysis/shadow.py)."""
