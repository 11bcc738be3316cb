"""Presentation: a release shown to people, as terminal views and as a self-contained HTML report."""
