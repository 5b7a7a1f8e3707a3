"""Seeded distortions that make a clean render look like a printed, handled and photographed ECG.

Every distortion has a documented probability (`AUGMENTATIONS`); one seed gives one image, and the applied
distortions with their parameters are returned, so a training sample can say how it was made. Paper and grid
colours are chosen before drawing (`random_style`), the rest is applied to the finished page (`distort`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ecgllm.render.paper import PaperStyle


@dataclass(frozen=True)
class Augmentation:
    name: str
    probability: float
    what: str


AUGMENTATIONS: tuple[Augmentation, ...] = (
    Augmentation("paper", 0.5, "off-white or yellowed paper (aged printout)"),
    Augmentation("grid_colour", 0.4, "grid in orange, green, blue or grey instead of red"),
    Augmentation("no_grid", 0.1, "plain paper, no grid"),
    Augmentation("page", 0.5, "another machine's page: header band 15-45 mm, trace 0.15-0.5 mm thick"),
    Augmentation("rotation", 0.5, "rotation by up to ±4°, the uncovered corners in a table colour"),
    Augmentation("perspective", 0.4, "camera perspective: each corner moved by up to 5% of the page"),
    Augmentation("wrinkles", 0.3, "smooth brightness field of a wrinkled sheet (±8%)"),
    Augmentation("creases", 0.3, "1-3 fold lines: a dark valley with a bright ridge beside it"),
    Augmentation("shadow", 0.3, "a shadow over part of the page (20-50% darker), soft edge"),
    Augmentation("blur", 0.3, "Gaussian blur, radius 0.4-1.5 px (focus, motion)"),
    Augmentation("noise", 0.4, "Gaussian sensor noise, σ 2-10 grey levels"),
    Augmentation("jpeg", 0.5, "JPEG compression, quality 25-90"),
)
PROBABILITY = {a.name: a.probability for a in AUGMENTATIONS}
LAYOUT_SHARES = {"3x4": 0.6, "6x2": 0.2, "12x1": 0.2}  # how often each layout is drawn for training renders

_GRID_COLOURS = {  # (minor, major)
    "orange": ((252, 222, 190), (240, 160, 90)), "green": ((205, 235, 205), (120, 190, 120)),
    "blue": ((210, 225, 250), (120, 150, 220)), "grey": ((225, 225, 225), (160, 160, 160)),
}


def augmentation_table() -> str:
    """The distortions and their probabilities as text (for --help and docs)."""
    return "\n".join(f"  {a.name:<12} p={a.probability:.2f}  {a.what}" for a in AUGMENTATIONS)


def random_layout(rng: np.random.Generator) -> str:
    """A layout drawn with `LAYOUT_SHARES` (one draw from ``rng``)."""
    names, shares = zip(*LAYOUT_SHARES.items())
    return str(rng.choice(names, p=np.asarray(shares) / sum(shares)))


def random_page(rng: np.random.Generator, applied: dict) -> dict:
    """Page-layout changes for `RenderOptions` (header band, trace thickness), or none."""
    if rng.random() >= PROBABILITY["page"]:
        return {}
    page = {"header_mm": round(float(rng.uniform(15, 45)), 1), "line_mm": round(float(rng.uniform(0.15, 0.5)), 2)}
    applied["page"] = page
    return page


def random_style(rng: np.random.Generator, applied: dict) -> PaperStyle:
    paper = (255, 255, 255)
    if rng.random() < PROBABILITY["paper"]:
        yellowing = rng.uniform(0, 1)
        paper = (int(252 - 8 * yellowing), int(250 - 18 * yellowing), int(245 - 50 * yellowing))
        applied["paper"] = paper
    style = PaperStyle(paper=paper)
    if rng.random() < PROBABILITY["no_grid"]:
        applied["no_grid"] = True
        return PaperStyle(paper=paper, grid=False)
    if rng.random() < PROBABILITY["grid_colour"]:
        name = str(rng.choice(sorted(_GRID_COLOURS)))
        minor, major = _GRID_COLOURS[name]
        applied["grid_colour"] = name
        style = PaperStyle(paper=paper, minor=minor, major=major)
    return style


def _perspective_coefficients(source: np.ndarray, target: np.ndarray) -> list[float]:
    """Pillow's 8 PERSPECTIVE coefficients mapping output points ``target`` back to input points ``source``."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, dtype=np.float64), source.reshape(-1)).tolist()


def _line_distance(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Signed distance (px) of every pixel to a random line across the page."""
    h, w = shape
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (xx - cx) * np.float32(np.sin(angle)) - (yy - cy) * np.float32(np.cos(angle))


def distort(image: Image.Image, rng: np.random.Generator, applied: dict) -> Image.Image:
    """Apply the page distortions, each with its probability; ``applied`` records what was done."""
    w, h = image.size
    table = tuple(int(v) for v in rng.integers(40, 140, size=3))
    if rng.random() < PROBABILITY["rotation"]:
        angle = float(rng.uniform(-4, 4))
        image = image.rotate(angle, resample=Image.BILINEAR, fillcolor=table)
        applied["rotation"] = round(angle, 2)
    if rng.random() < PROBABILITY["perspective"]:
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
        moved = corners + rng.uniform(-0.05, 0.05, size=(4, 2)) * [w, h]
        image = image.transform((w, h), Image.PERSPECTIVE, _perspective_coefficients(corners, moved),
                                resample=Image.BILINEAR, fillcolor=table)
        applied["perspective"] = np.round(moved - corners).astype(int).tolist()
    pixels = None
    if rng.random() < PROBABILITY["wrinkles"]:
        coarse = Image.fromarray((rng.uniform(0, 1, size=(6, 8)) * 255).astype(np.uint8))
        field = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
        pixels = np.asarray(image, dtype=np.float32)
        pixels *= (0.92 + 0.16 * field)[..., None]
        applied["wrinkles"] = True
    if rng.random() < PROBABILITY["creases"]:
        pixels = np.asarray(image, dtype=np.float32) if pixels is None else pixels
        n = int(rng.integers(1, 4))
        for _ in range(n):
            d = _line_distance((h, w), rng)
            width = rng.uniform(1.5, 4.0)
            pixels *= (1 - 0.25 * np.exp(-(d / width) ** 2) + 0.08 * np.exp(-((d - 2.5 * width) / width) ** 2))[..., None]
        applied["creases"] = n
    if rng.random() < PROBABILITY["shadow"]:
        pixels = np.asarray(image, dtype=np.float32) if pixels is None else pixels
        d = _line_distance((h, w), rng)
        depth = rng.uniform(0.2, 0.5)
        pixels *= (1 - depth / (1 + np.exp(-d / (0.03 * w))))[..., None]
        applied["shadow"] = round(float(depth), 2)
    if pixels is not None:
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < PROBABILITY["blur"]:
        radius = float(rng.uniform(0.4, 1.5))
        image = image.filter(ImageFilter.GaussianBlur(radius))
        applied["blur"] = round(radius, 2)
    if rng.random() < PROBABILITY["noise"]:
        sigma = float(rng.uniform(2, 10))
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, sigma, size=(h, w, 1)).astype(np.float32)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        applied["noise"] = round(sigma, 1)
    if rng.random() < PROBABILITY["jpeg"]:
        quality = int(rng.integers(25, 91))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        applied["jpeg"] = quality
    return image
