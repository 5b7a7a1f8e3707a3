"""How common each ECG-QA template is in the official PTB-XL train split, estimated from sample ids.

Generated question sets draw templates uniformly, so their EM weighs a template asked 800 times in the official
train split as much as one asked 20,000 times; the official test questions that judge a model follow the official
mix. The official files number their samples in template order (sample ids rise with the template id; checked
here on every sample we have, and an error if it ever fails), so the first sample id seen for each template marks
where its run begins, and a template's share is the length of its run over the split's length. The samples we
have (`official_sample/template_train.json` and the train chunks in ``../shared``) give those first ids to within
the sample's spacing: a share is an estimate, good to about a tenth of a small template's run. A template the
samples never show folds into the run before it (its share is counted there), which the result says.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TemplateShares:
    shares: dict[int, float]       # template id -> estimated share of the official train split
    split_size: int                # samples in the split (the last sample id seen + 1)
    unseen_after: dict[int, int]   # templates absent from the samples -> the template whose run holds them

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
    starts: dict[int, int] = {}
    for sample_id, template_id in samples:
        starts.setdefault(template_id, sample_id)
    split_size = samples[-1][0] + 1
    ordered = sorted(starts)
    ends = [starts[t] for t in ordered[1:]] + [split_size]
    shares = {t: (end - starts[t]) / split_size for t, end in zip(ordered, ends)}
    unseen = {t: max((s for s in ordered if s < t), default=ordered[0])
              for t in (template_ids or range(1, 71)) if t not in starts}
    return TemplateShares(shares=shares, split_size=split_size, unseen_after=unseen)
