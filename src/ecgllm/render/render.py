"""`render_ecg`: one call from an `ECG` to a paper image, clean or distorted with a seed."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG
from ecgllm.render.augment import distort, random_page, random_style
from ecgllm.render.paper import PaperGeometry, RenderOptions, header_lines, render_paper


@dataclass
class RenderedECG:
    image: Image.Image
    geometry: PaperGeometry            # where each lead lies on the clean page (before any distortion)
    augmentations: dict = field(default_factory=dict)

    def as_ecg_image(self, **meta) -> ECGImage:
        """The page as the `ECGImage` a model reads (as if it had been photographed)."""
        return ECGImage(self.image, {"format": "image", **meta})


def render_ecg(ecg: ECG, layout: str = "3x4", *, dpi: float = 100.0, augment: bool = False, seed: int = 0,
               header: bool = True, measurements: dict | None = None) -> RenderedECG:
    """Draw ``ecg`` as a printed 12-lead ECG (25 mm/s, 10 mm/mV). ``augment``: seeded distortions from
    `ecgllm.render.augment.AUGMENTATIONS`; ``measurements`` (e.g. from `ecgllm.signal.measure`) fill the header."""
    options = RenderOptions(layout=layout, dpi=dpi, header=header)
    applied: dict = {}
    rng = np.random.default_rng(seed)
    if augment:
        options = replace(options, style=random_style(rng, applied), **random_page(rng, applied))
    image, geometry = render_paper(ecg, options, header_lines(ecg, measurements) if header else None)
    if augment:
        image = distort(image, rng, applied)
    return RenderedECG(image, geometry, applied)
