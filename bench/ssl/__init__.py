"""Methods and self-supervised pretraining: the method interface and registry, the engine's
settings, batched on-device view augmentation, and the one pretraining loop (cache, checkpoints,
resume, export) every SSL method shares.

Imports ``bench.core``, ``bench.data`` and ``bench.models``. The registry imports ``methods/``
(discovery), the only import of a higher layer.
"""
