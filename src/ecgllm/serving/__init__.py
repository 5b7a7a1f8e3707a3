"""User-facing entry points: the `ecgllm` command line (Python API and REST come later)."""
