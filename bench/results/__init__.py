"""The results store (one row per run, its metrics, in any SQLAlchemy database) and the tidy
frames of succeeded runs that tables and plots read.

Imports ``bench.core`` and ``bench.data`` (cards, for class names) only.
"""
