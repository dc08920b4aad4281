"""Benchmarks: every mode side by side (`compare`), and the server's raw decode speed (`decode_throughput`)."""
