"""Networks and their weights: smp encoders and segmenters, strict weight loading, the one
definition of model-input normalisation, the working scale (resizing images and masks to it), and
ImageNet weights.

Imports ``bench.core`` and ``bench.data`` (cards, downloads) only. Both pretraining (``bench.ssl``)
and fine-tuning (``bench.finetune``) build their networks here, so neither needs the other.
"""
