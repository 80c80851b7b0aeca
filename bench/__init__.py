"""Benchmark commands (print numbers; never timed tests)."""
