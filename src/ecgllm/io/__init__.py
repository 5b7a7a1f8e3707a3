"""Read ECG files of any supported format into one validated `ECG` record."""

from ecgllm.io.errors import (
    CorruptFileError,
    DurationError,
    ECGFileNotFoundError,
    ECGQualityWarning,
    ECGReadError,
    EmptyFileError,
    FileTooLargeError,
    HeaderError,
    InvalidSignalError,
    SamplingRateError,
    TruncatedDataError,
    UnknownLeadError,
    UnsupportedFormatError,
)
from ecgllm.io.image import ECGImage
from ecgllm.io.leads import KNOWN_LEADS, STANDARD_12, canonical_lead
from ecgllm.io.limits import DEFAULT_LIMITS, ReadLimits
from ecgllm.io.reader import FORMATS, detect_format, read_ecg
from ecgllm.io.record import ECG

__all__ = [
    "ECG", "ECGImage", "read_ecg", "detect_format", "FORMATS", "ReadLimits", "DEFAULT_LIMITS",
    "STANDARD_12", "KNOWN_LEADS", "canonical_lead",
    "ECGReadError", "CorruptFileError", "ECGFileNotFoundError", "EmptyFileError", "UnsupportedFormatError", "HeaderError",
    "TruncatedDataError", "InvalidSignalError", "UnknownLeadError", "SamplingRateError", "DurationError",
    "FileTooLargeError", "ECGQualityWarning",
]
