"""Streamfit's benchmarks: `python -m benchmarks --quick|--full` (see benchmarks/README.md)."""
