"""Few-shot fine-tuning and evaluation: settings, the training loop, inference, losses and the
confusion-matrix metrics every protocol is scored with.

Imports ``bench.core``, ``bench.data`` and ``bench.models``; never pretraining (``bench.ssl``),
which hands over encoder weights only.
"""
