"""Everything about datasets: cards, where their images come from (files or a generator),
decoding, the few-shot protocol (splits, validation, draws), the SSL pool, downloads, fetch
recipes and ``data check``.

Imports ``bench.core`` only. Nothing here knows about networks or training.
"""
