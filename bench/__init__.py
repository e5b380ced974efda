"""The benchmark suite (``python -m bench``); results in docs/benchmarks.md."""
