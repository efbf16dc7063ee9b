"""Packages of the project; everything else is in pyproject.toml.

The dataset cards stay in the top-level ``datasets/`` folder (no Python there) and are installed
as the data-only package ``microssl_bench_datasets``, so a non-editable install has them.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["bench*", "methods*"]), "microssl_bench_datasets"],
    package_dir={"microssl_bench_datasets": "datasets"},
)
