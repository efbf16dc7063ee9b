"""MicroSSL-Bench: self-supervised pretraining for few-shot micrograph segmentation."""

from importlib import metadata

try:
    __version__ = metadata.version("microssl-bench")  # one home: pyproject.toml
except metadata.PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
