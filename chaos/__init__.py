"""The chaos soak (``python -m chaos``); results in docs/chaos.md."""
