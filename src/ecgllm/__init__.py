"""ecgllm: let a large language model read electrocardiograms."""

from ecgllm.io import ECG, ECGReadError, read_ecg

__version__ = "0.1.0"
__all__ = ["ECG", "ECGAssistant", "ECGReadError", "read_ecg", "__version__"]


def __getattr__(name: str):
    if name == "ECGAssistant":  # imported on first use: `import ecgllm` stays light (no torch)
        from ecgllm.serving.assistant import ECGAssistant

        return ECGAssistant
    raise AttributeError(f"module 'ecgllm' has no attribute {name!r}")
