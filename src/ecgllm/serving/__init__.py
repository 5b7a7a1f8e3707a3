"""User-facing entry points: the `ecgllm` command line, the Python API (`ECGAssistant`), the REST and
OpenAI-compatible server with its web page, and the request batcher."""
