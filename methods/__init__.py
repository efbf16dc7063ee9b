"""One module per method; each registers itself with ``bench.registry.register_method``."""
