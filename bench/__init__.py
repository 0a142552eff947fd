"""Benchmarks of distrib against its peers; run with `bench/run` (see `bench/run --help`)."""
