"""Configurable limits applied to every record that is read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReadLimits:
    """Bounds that protect callers (and servers) from unusable or hostile input.

    The defaults admit everything from a 2.5 s strip to a 24 h Holter recording.
    """

    min_fs: float = 50.0
    max_fs: float = 10_000.0
    min_duration_s: float = 2.5
    max_duration_s: float = 24 * 3600.0
    max_file_bytes: int = 1 << 30
    max_leads: int = 64
    max_image_pixels: int = 40_000_000   # decompression bombs: checked from the image header, before decoding

    def __post_init__(self) -> None:
        if not 0 < self.min_fs <= self.max_fs:
            raise ValueError("ReadLimits needs 0 < min_fs <= max_fs")
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError("ReadLimits needs 0 <= min_duration_s <= max_duration_s")


DEFAULT_LIMITS = ReadLimits()
