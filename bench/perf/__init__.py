"""``bench perf``: how fast the engines run on a device (sizes, timing and memory probes, the
measurements, a concurrent-process harness, the seed code's loop as a reference, the JSON record
and its table). A benchmark, not a test: its figures depend on the machine.

Imports every layer below ``bench.commands``; nothing imports it but the ``perf`` command.
"""
