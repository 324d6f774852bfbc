"""Benchmarks (`make bench`): each measures on the real embedded stack, writes its figures to
``bench/results/<name>.json`` and prints a table. Nothing here is asserted in tests."""
