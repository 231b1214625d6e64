"""Benchmarks that measure torchformer against a reference in one run."""
