"""Positive and negative controls: evidence that the frozen-encoder probe can see a pretraining
effect (``python -m bench controls``)."""
