"""One exception hierarchy for everything that can go wrong while reading an ECG.

Every message names the file and says what the user can do about it, so the CLI can print it as is.
"""

from __future__ import annotations

from pathlib import Path

from ecgllm.errors import InputError


class ECGReadError(InputError):
    """Base class: the file could not be turned into a valid ECG record."""

    def __init__(self, path: str | Path | None, problem: str, hint: str = "") -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.hint = hint
        where = f"{self.path}: " if self.path else ""
        text = f"{where}{problem}"
        if hint:
            text += f" {hint}"
        super().__init__(text)


class ECGFileNotFoundError(ECGReadError, FileNotFoundError):
    """The path does not exist (or a companion file such as the .dat of a .hea is missing)."""


class EmptyFileError(ECGReadError):
    """The file exists but holds no bytes or no samples."""


class UnsupportedFormatError(ECGReadError):
    """Neither the extension nor the content matches a format ecgllm reads."""


class HeaderError(ECGReadError):
    """The header/metadata is unreadable or contradicts itself or the data."""


class TruncatedDataError(ECGReadError):
    """The data holds fewer samples than its header announces."""


class InvalidSignalError(ECGReadError):
    """The samples themselves are unusable (NaN/inf, every lead flat or saturated)."""


class UnknownLeadError(ECGReadError):
    """A channel name is not an ECG lead ecgllm knows."""


class SamplingRateError(ECGReadError):
    """The sampling rate is missing or outside the supported range."""


class DurationError(ECGReadError):
    """The recording is shorter or longer than the configured limits."""


class FileTooLargeError(ECGReadError):
    """The file is bigger than the configured size limit."""


class CorruptFileError(ECGReadError):
    """The file's format was recognised but its parser failed on its contents (damaged or not what it claims)."""


class ECGQualityWarning(UserWarning):
    """Some leads are flat-lined or saturated; the record is still usable."""
