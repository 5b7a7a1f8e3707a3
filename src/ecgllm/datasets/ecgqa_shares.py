"""How common each ECG-QA template is in the official PTB-XL train split, estimated from sample ids.

Generated question sets draw templates uniformly, so their EM weighs a template asked 800 times in the official
train split as much as one asked 20,000 times; the official test questions that judge a model follow the official
mix. The official files number their samples in template order (sample ids rise with the template id; checked
here on every sample we have, and an error if it ever fails), so each template holds one run of ids. The samples we
have (`official_sample/template_train.json` and the train chunks in ``../shared``) show, for each template, the
first and last ids seen; its run starts somewhere after the previous template's last id seen and at or before its
own first. The estimate puts each boundary at the midpoint of that gap; ``share_range`` keeps the shortest and the
longest run the samples allow. A gap can be wide (the samples are drawn in windows of ids), so a small template's
share is uncertain by up to a few per cent of the split. A template the samples never show (named in
``unseen_after``, with the seen template before it) gets an equal part of the gap it must lie in.
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
    unseen_after: dict[int, int]                    # templates absent from the samples -> the seen one before

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
    unseen = {t: max((s for s in ordered if s < t), default=0)
              for t in (template_ids or range(1, 71)) if t not in first}
    # Between two seen templates lies a gap of ids no sample shows, which holds the end of the first, the unseen
    # templates between them and the start of the second: it is cut into equal parts, one each (the midpoint when
    # none is unseen). Unseen templates before every seen one share the ids before the first id seen.
    bounds: dict[int, tuple[float, float]] = {}
    for k, t in enumerate([0] + ordered):
        gap_start = last[t] + 1 if t else 0
        gap_end = first[ordered[k]] if k < len(ordered) else split_size
        between = sorted(u for u, owner in unseen.items() if owner == t)
        if k == len(ordered):  # the split ends at the last id seen: nothing comes after the last template
            gap_end = gap_start
        owners = ([t] if t else []) + between + ([ordered[k]] if k < len(ordered) else [])
        step = (gap_end - gap_start) / max(len(owners), 1)
        edges = [gap_start + step * j for j in range(len(owners) + 1)]
        if t:  # the seen template before the gap ends after its first part
            bounds[t] = (bounds[t][0], edges[1])
            owners, edges = owners[1:], edges[1:]
        for j, u in enumerate(owners):
            bounds[u] = (edges[j], edges[j + 1] if u in unseen else float("nan"))
    shares = {t: (end - begin) / split_size for t, (begin, end) in bounds.items()}
    share_range: dict[int, tuple[float, float]] = {}
    for k, t in enumerate(ordered):
        after = first[ordered[k + 1]] if k + 1 < len(ordered) else split_size
        before = last[ordered[k - 1]] + 1 if k else 0
        share_range[t] = ((last[t] - first[t] + 1) / split_size, (after - before) / split_size)
    for u, owner in unseen.items():
        nxt = min((s for s in ordered if s > u), default=None)
        share_range[u] = (0.0, ((first[nxt] if nxt else split_size) - (last[owner] + 1 if owner else 0)) / split_size)
    return TemplateShares(shares=shares, share_range=share_range, split_size=split_size, unseen_after=unseen)
