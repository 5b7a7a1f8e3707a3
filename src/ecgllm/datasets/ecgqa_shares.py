"""How common each ECG-QA template is in the official PTB-XL train split, estimated from sample ids.

Generated question sets draw templates uniformly, so their EM weighs a template asked 800 times in the official
train split as much as one asked 20,000 times; the official test questions that judge a model follow the official
mix. The official files number their samples in template order (sample ids rise with the template id; checked
here on every sample we have, and an error if it ever fails), so each template holds one run of ids. The samples we
have (`official_sample/template_train.json` and the train chunks in ``../shared``) show, for each template, the
first and last ids seen; its run starts somewhere after the previous template's last id seen and at or before its
own first. The estimate puts each boundary at the midpoint of that gap; ``share_range`` keeps the shortest and the
longest run the samples allow. A gap can be wide (the samples are drawn in windows of ids), so a small template's
share is uncertain by up to a few per cent of the split. Templates the samples never show share the run of the
template before them equally (named in ``unseen_after``).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TemplateShares:
    shares: dict[int, float]                        # template id -> estimated share of the official train split
    share_range: dict[int, tuple[float, float]]     # the smallest and largest share the samples allow
    split_size: int                                 # samples in the split (the last sample id seen + 1)
    unseen_after: dict[int, int]                    # templates absent from the samples -> the run they share

    def weighted_mean(self, per_template: dict[int, float]) -> tuple[float, float]:
        """``per_template`` values averaged with the official shares of their templates, and the share of the
        official mix those templates cover (the mean says nothing about the rest)."""
        covered = {t: self.shares[t] for t in per_template if t in self.shares}
        total = sum(covered.values())
        if total == 0:
            raise ValueError("none of these templates has an official share")
        return sum(per_template[t] * share for t, share in covered.items()) / total, total


def _train_samples(ecgqa_dir: Path) -> list[tuple[int, int]]:
    """(sample id, template id) of every official template-worded train sample in ``ecgqa_dir`` (the ECG-QA
    folder of ../shared/data: official_sample/ and ecgqa/ptbxl/template/train/*.json.gz)."""
    sample_file = ecgqa_dir / "official_sample" / "template_train.json"
    chunks = sorted((ecgqa_dir / "ecgqa" / "ptbxl" / "template" / "train").glob("*.json.gz"))
    if not sample_file.is_file() or not chunks:
        raise FileNotFoundError(f"{ecgqa_dir}: no official_sample/template_train.json or template/train chunks")
    rows = json.loads(sample_file.read_text())
    for chunk in chunks:
        rows += json.loads(gzip.open(chunk).read())
    return sorted({(int(r["sample_id"]), int(r["template_id"])) for r in rows})


def official_template_shares(ecgqa_dir: Path, template_ids: list[int] | None = None) -> TemplateShares:
    """The shares of the official train split's templates (see the module docstring). ``template_ids``: the
    templates that exist (default 1..70), to name those the samples never show."""
    samples = _train_samples(ecgqa_dir)
    for (id_a, t_a), (id_b, t_b) in zip(samples, samples[1:]):
        if t_b < t_a:
            raise ValueError(f"sample {id_b} (template {t_b}) follows sample {id_a} (template {t_a}): the official "
                             "samples are not in template order, so sample ids do not estimate template shares")
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for sample_id, template_id in samples:
        first.setdefault(template_id, sample_id)
        last[template_id] = sample_id
    split_size = samples[-1][0] + 1  # the last train chunk ends the split
    ordered = sorted(first)
    # a run starts after the previous template's last id seen, at or before its own first: midpoint of the gap
    starts = [0.0] + [(last[prev] + 1 + first[t]) / 2 for prev, t in zip(ordered, ordered[1:])]
    ends = starts[1:] + [float(split_size)]
    unseen = {t: max((s for s in ordered if s < t), default=ordered[0])
              for t in (template_ids or range(1, 71)) if t not in first}
    shares: dict[int, float] = {}
    share_range: dict[int, tuple[float, float]] = {}
    for k, t in enumerate(ordered):
        sharing = [t] + [u for u, owner in unseen.items() if owner == t]
        low = (last[t] - first[t] + 1) / split_size
        high = ((first[ordered[k + 1]] if k + 1 < len(ordered) else split_size)
                - (last[ordered[k - 1]] + 1 if k else 0)) / split_size
        for u in sharing:  # an unseen template shares the run of the seen one before it
            shares[u] = (ends[k] - starts[k]) / split_size / len(sharing)
            share_range[u] = (low if u == t else 0.0, high)
    return TemplateShares(shares=shares, share_range=share_range, split_size=split_size, unseen_after=unseen)
