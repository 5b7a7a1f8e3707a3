"""ECG images (photographs or scans of printed ECGs): read, checked, kept as RGB pixels for the image encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ecgllm.io.errors import CorruptFileError, FileTooLargeError


@dataclass
class ECGImage:
    """A picture of a printed 12-lead ECG.

    Attributes:
        image: the RGB pixels (EXIF orientation applied, alpha dropped onto white).
        meta: ``source`` (path), ``format`` ("image"), ``image_format`` (PNG, JPEG, ...), ``size`` (w, h).
    """

    image: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def __repr__(self) -> str:
        return f"ECGImage({self.size[0]}x{self.size[1]}, source={self.meta.get('source')!r})"


def read_image(path: Path, max_pixels: int) -> ECGImage:
    from PIL import ImageOps

    try:
        with Image.open(path) as probe:  # the header only: refuse decompression bombs before decoding
            width, height = probe.size
            kind = probe.format
    except Exception as exc:
        raise CorruptFileError(path, f"could not be read as an image ({type(exc).__name__}: {str(exc)[:200]}).",
                               "The file may be damaged or not an image; export or photograph it again.") from None
    if width * height > max_pixels:
        raise FileTooLargeError(path, f"is a {width}x{height} image; the limit is {max_pixels:,} pixels.",
                                "Downscale it (an A4/letter page at 200 dpi is plenty) or raise "
                                "ReadLimits.max_image_pixels.")
    if min(width, height) < 64:
        raise CorruptFileError(path, f"is a {width}x{height} image, too small to hold a readable ECG.",
                               "Use a scan or photograph of the whole printed page.")
    try:
        with Image.open(path) as source:
            source = ImageOps.exif_transpose(source)
            if source.mode in ("RGBA", "LA", "P"):
                source = source.convert("RGBA")
                page = Image.new("RGB", source.size, (255, 255, 255))
                page.paste(source, mask=source.getchannel("A"))
            else:
                page = source.convert("RGB")
    except Exception as exc:
        raise CorruptFileError(path, f"could not be decoded as an image ({type(exc).__name__}: {str(exc)[:200]}).",
                               "The file may be truncated; copy or export it again.") from None
    return ECGImage(page, {"source": str(path), "format": "image", "image_format": kind, "size": page.size})
