from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ecgllm.datasets.ecgqa_shares import TemplateShares, official_template_shares
from tests.conftest import SHARED, needs_shared


def _write_official(root: Path, sample: list[tuple[int, int]], chunk: list[tuple[int, int]]) -> Path:
    (root / "official_sample").mkdir(parents=True)
    (root / "official_sample" / "template_train.json").write_text(
        json.dumps([{"sample_id": s, "template_id": t} for s, t in sample]))
    chunks = root / "ecgqa" / "ptbxl" / "template" / "train"
    chunks.mkdir(parents=True)
    with gzip.open(chunks / "10.json.gz", "wt") as f:
        json.dump([{"sample_id": s, "template_id": t} for s, t in chunk], f)
    return root


def test_a_template_s_share_is_its_run_of_sample_ids(tmp_path):
    # ids seen: template 1 at 0 and 2, template 2 at 4 and 6, template 4 at 10, 15 and 19; 3 never appears.
    # The gap 3-4 is cut at its midpoint (1 | 2 at 3.5); the gap 7-9 holds the end of 2, all of 3 and the start of
    # 4, a third each (2 | 3 at 8, 3 | 4 at 9).
    root = _write_official(tmp_path, [(0, 1), (2, 1), (4, 2), (6, 2)], [(10, 4), (15, 4), (19, 4)])
    shares = official_template_shares(root, template_ids=[1, 2, 3, 4])
    assert shares.split_size == 20
    assert shares.shares == pytest.approx({1: 3.5 / 20, 2: 4.5 / 20, 3: 1 / 20, 4: 11 / 20})
    assert shares.unseen_after == {3: 2}
    # template 2 holds at least ids 4-6 and at most 3-9; 3 at most 7-9; 4 at least 10-19, at most 7-19
    assert shares.share_range[2] == pytest.approx((3 / 20, 7 / 20))
    assert shares.share_range[3] == pytest.approx((0.0, 3 / 20))
    assert shares.share_range[4] == pytest.approx((10 / 20, 13 / 20))
    for template, share in shares.shares.items():  # every estimate lies within what the samples allow
        low, high = shares.share_range[template]
        assert low <= share <= high


def test_samples_out_of_template_order_stop_the_estimate(tmp_path):
    root = _write_official(tmp_path, [(0, 2), (5, 1)], [(10, 3)])
    with pytest.raises(ValueError, match="not in template order"):
        official_template_shares(root)


def test_a_missing_official_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="template_train.json"):
        official_template_shares(tmp_path)


def test_the_weighted_mean_uses_only_the_templates_given():
    shares = TemplateShares(shares={1: 0.6, 2: 0.3, 3: 0.1}, share_range={}, split_size=10, unseen_after={})
    mean, covered = shares.weighted_mean({1: 1.0, 3: 0.0})
    assert mean == pytest.approx(0.6 / 0.7)
    assert covered == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no official share|none of these"):
        shares.weighted_mean({9: 1.0})


@needs_shared
def test_the_official_shares_match_a_whole_train_chunk():
    """Chunk 260000 ends the train split and holds templates 69 and 70 whole: their shares are exact there."""
    ecgqa = SHARED / "ecgqa"
    shares = official_template_shares(ecgqa)
    chunk = json.loads(gzip.open(ecgqa / "ecgqa/ptbxl/template/train/260000.json.gz").read())
    assert shares.split_size == max(s["sample_id"] for s in chunk) + 1
    for template in (69, 70):
        count = sum(s["template_id"] == template for s in chunk)
        assert shares.shares[template] * shares.split_size == pytest.approx(count)
    assert sum(shares.shares.values()) == pytest.approx(1.0)
    assert set(shares.shares) == set(range(1, 71))
    assert all(low <= shares.shares[t] <= high for t, (low, high) in shares.share_range.items())
