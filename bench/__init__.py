"""Benchmarks: speed and memory goals, measured as ratios within one run (results in BENCHMARKS.md)."""
