"""Image instruction data: the same conversations with (a seeded share of) their ECGs given as paper renders.

Any builder's output (ECG-QA-style, ECGInstruct-style, official) becomes image questions this way: each chosen
ECG reference gets a ``render`` spec (`ecgllm.render.pages.PageSpec`: layout, distortions on or off, seed, drawn
as image distillation draws its pages), and training draws that page from the record's signal when it loads the
sample, so the answers stay those of the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgllm.datasets.conversation import read_jsonl, write_jsonl
from ecgllm.render.pages import training_page


def as_images(conversations: str | Path, out: str | Path, share: float = 1.0, augment_share: float = 0.7,
              seed: int = 0) -> dict:
    """Write ``out`` with a seeded ``share`` of the conversations' ECGs turned into render specs."""
    if not 0.0 <= share <= 1.0 or not 0.0 <= augment_share <= 1.0:
        raise ValueError("share and augment_share must lie in 0..1")
    rng = np.random.default_rng(seed)
    counts = {"conversations": 0, "rendered_ecgs": 0, "signal_ecgs": 0}

    def converted():
        for conversation in read_jsonl(conversations):
            counts["conversations"] += 1
            if rng.random() < share:
                for ref in conversation.ecgs:
                    augment = bool(rng.random() < augment_share)  # the page as image distillation draws one
                    ref.render = training_page(int(rng.integers(0, 2**31 - 1)), augment).reference()
                    counts["rendered_ecgs"] += 1
            else:
                counts["signal_ecgs"] += len(conversation.ecgs)
            yield conversation

    write_jsonl(converted(), out)
    return counts
