"""Foundations every stage uses: user errors, consoles, local paths, provenance, devices, the
compile policy, the precision rule, learning-rate schedules and URL masking.

Owns no pipeline logic. Imports only the standard library and third-party packages, never another
``bench`` package.
"""
