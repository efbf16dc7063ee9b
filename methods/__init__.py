"""One module per method; each registers itself with ``bench.ssl.registry.register_method``."""
