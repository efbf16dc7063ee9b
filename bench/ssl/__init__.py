"""Methods and self-supervised pretraining: the method interface and registry, the engine's
settings, batched on-device view augmentation, contrastive losses that never take a crop of an
image as its negative, and the one pretraining loop (verified atomic cache, checkpoints, resume,
export) every SSL method shares.

Imports ``bench.core``, ``bench.data`` and ``bench.models``. The registry imports ``methods/``
(discovery), the only import of a higher layer.
"""
