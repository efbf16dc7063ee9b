"""MicroSSL-Bench: self-supervised pretraining for few-shot micrograph segmentation."""

__version__ = "0.1.0"
