"""How a recording becomes a page, said once: a `PageSpec` (layout, distortions on or off, seed) drawn by
`render_ecg`, and the two policies that choose one.

- Training pages (image distillation, `ecgllm data as-images`) vary the layout: `training_page` draws it from a
  stream of its own (``[LAYOUT_STREAM, seed]``), because the renderer draws the paper colour first from
  ``default_rng(seed)``; sharing that stream tied the two (every yellowed page was 3x4).
- Evaluation pages are the clinical 3x4 layout with a rhythm strip: `evaluation_page` seeds each recording by the
  run's seed and the recording's key, so every evaluation that asks about pictures draws a record the same way.
A conversation's ECG reference carries its spec (``render``: `PageSpec.reference`), which training reads back."""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from ecgllm.render.render import RenderedECG, render_ecg

LAYOUT_STREAM = 1  # the layout's own random stream (see the module's docstring)


@dataclass(frozen=True)
class PageSpec:
    layout: str = "3x4"
    augment: bool = False
    seed: int = 0

    def draw(self, ecg) -> RenderedECG:
        return render_ecg(ecg, self.layout, augment=self.augment, seed=self.seed)

    def reference(self) -> dict:
        """The spec as a conversation's ECG reference holds it (``{"layout", "augment", "seed"}``)."""
        return asdict(self)

    @classmethod
    def from_reference(cls, render: dict) -> "PageSpec":
        return cls(str(render.get("layout", "3x4")), bool(render.get("augment")), int(render.get("seed", 0)))


def training_page(seed: int, augment: bool) -> PageSpec:
    """A training page: the layout from its own stream, the rest of the page from ``seed``."""
    from ecgllm.render.augment import random_layout

    return PageSpec(random_layout(np.random.default_rng([LAYOUT_STREAM, seed])), augment, seed)


def evaluation_page(run_seed: int, key: int | str, augment: bool) -> PageSpec:
    """An evaluation page of the recording ``key`` (a PTB-XL ecg_id, or a file name): 3x4, seeded by the run's seed
    and the key."""
    own = int(key) if isinstance(key, int) else zlib.crc32(str(key).encode())
    return PageSpec("3x4", augment, run_seed * 1_000_003 + own)
