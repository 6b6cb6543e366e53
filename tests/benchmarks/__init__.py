"""Tests of the benchmarks package (run at a tiny scale)."""
