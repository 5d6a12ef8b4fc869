"""Benchmark suite of convbert-kernels: see benchmarks/README or the project README."""
