"""ecgllm: let a large language model read electrocardiograms."""

from ecgllm.io import ECG, ECGReadError, read_ecg

__version__ = "0.1.0"
__all__ = ["ECG", "ECGReadError", "read_ecg", "__version__"]
