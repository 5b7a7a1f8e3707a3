"""The label head refit (`ecgllm.training.label_head`, scripts/fit_label_head.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ecgllm.datasets.split_policy import read_training_records, write_training_records
from ecgllm.datasets.split_policy import ForbiddenRecordsError, SplitPolicy
from ecgllm.models.card import ArtifactCard, Provenance, file_sha256, read_card, write_card
from ecgllm.training.label_head import HEAD_KEYS, STAGE, fit_head, fit_rows, head_aucs, write_refitted_model

ROOT = Path(__file__).resolve().parents[1]


def linear_labels(n: int, seed: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and 76 labels that a linear head can read (each label a noisy threshold of one projection)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, weights.shape[0])).astype(np.float32)
    y = (x @ weights + 0.5 * rng.normal(size=(n, weights.shape[1])) > 0.8).astype(np.float32)
    return x, y


def test_the_fit_reads_the_labels_better_and_leaves_the_given_head_alone():
    weights = np.random.default_rng(0).normal(size=(16, 76))
    train, stop = linear_labels(3000, 1, weights), linear_labels(800, 2, weights)
    torch.manual_seed(0)
    head = nn.Linear(16, 76)  # an unfitted head: it ranks at chance
    before = {k: v.clone() for k, v in head.state_dict().items()}
    fitted, kept, history = fit_head(head, train, stop, epochs=5, lr=1e-2, progress=False)
    assert kept > 0 and history[kept]["loss"] > 0
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert history[0] == {"epoch": 0, **head_aucs(head, *stop)}
    after = head_aucs(fitted, *stop)
    assert after["statements_macro_auc"] > history[0]["statements_macro_auc"] + 0.2
    assert after["superclass_macro_auc"] > history[0]["superclass_macro_auc"] + 0.2
    assert not fitted.weight.requires_grad


def test_the_fit_keeps_the_head_when_every_epoch_reads_the_stop_records_worse():
    """Stop labels that a fit on the training labels can only rank worse (their opposite): epoch 0 is kept."""
    weights = np.random.default_rng(0).normal(size=(8, 76))
    train = linear_labels(1000, 1, weights)
    x, y = linear_labels(400, 2, weights)
    stop = (x, 1.0 - y)
    head = nn.Linear(8, 76)
    with torch.no_grad():  # a head that reads the stop labels well: training on the others moves it away
        head.weight.copy_(torch.from_numpy(-weights.T.astype(np.float32)))
        head.bias.zero_()
    fitted, kept, history = fit_head(head, train, stop, epochs=3, lr=5e-2, progress=False)
    assert kept == 0 and len(history) == 4
    assert all(h["statements_macro_auc"] < history[0]["statements_macro_auc"] for h in history[1:])
    assert torch.equal(fitted.weight, head.weight) and torch.equal(fitted.bias, head.bias)


def test_fit_and_stop_records_leave_out_every_forbidden_record_and_fold_10():
    """Stop rows: fold 9 without the policy's forbidden records (ECG-QA valid/test patients); a fit row the policy
    forbids stops the refit."""
    ids = np.array([10, 11, 12, 13, 14, 15])
    policy = SplitPolicy(frozenset({13}), frozenset({14}), 0, "x")  # test patient's 13, valid patient's 14
    train, stop = fit_rows(ids, np.array([0, 1]), np.array([2, 3, 4]), policy)
    assert ids[train].tolist() == [10, 11] and ids[stop].tolist() == [12]
    with pytest.raises(ForbiddenRecordsError):
        fit_rows(ids, np.array([0, 3]), np.array([2]), policy)


def fake_model_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "ecgllm", "name": "ecgllm-default",
                                                    "shipped_from": "some_run"}))
    save_file({HEAD_KEYS[0]: torch.zeros(76, 8), HEAD_KEYS[1]: torch.zeros(76), "projector.weight": torch.ones(3)},
              folder / "model.safetensors")
    write_training_records(folder, "instruction", [1, 2, 3])
    write_card(folder, ArtifactCard(kind="language_model", prep={}, metrics={"official_valid_em": 0.5},
                                    provenance=Provenance(ecgllm_version="0", recipe={"stage": "instruction"},
                                                          shipped_from="some_run")))


def test_the_refitted_copy_changes_the_head_alone_and_records_the_fit(tmp_path):
    fake_model_folder(tmp_path / "model")
    head = nn.Linear(8, 76)
    write_refitted_model(tmp_path / "model", tmp_path / "out", head, np.array([7, 5]), {"stage": STAGE})
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(weights[HEAD_KEYS[0]], head.weight.detach())
    assert torch.equal(weights[HEAD_KEYS[1]], head.bias.detach())
    assert torch.equal(weights["projector.weight"], torch.ones(3))
    assert torch.equal(load_file(tmp_path / "model" / "model.safetensors")[HEAD_KEYS[0]], torch.zeros(76, 8))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["name"] == "out" and config["shipped_from"] is None
    stages = read_training_records(tmp_path / "out")["stages"]
    assert stages == [{"stage": "instruction", "records": [1, 2, 3]}, {"stage": STAGE, "records": [5, 7]}]
    card = read_card(tmp_path / "out")  # the copy's own: its recipe and records, none of the figures it came with
    assert card.metrics == {} and card.provenance.recipe == {"stage": STAGE} and card.provenance.shipped_from is None
    assert card.provenance.training_records_sha256 == file_sha256(tmp_path / "out" / "training_records.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]  # nothing left of the staging
    with pytest.raises(FileExistsError):
        write_refitted_model(tmp_path / "model", tmp_path / "out", head, np.array([7, 5]), {"stage": STAGE})


def test_a_folder_without_a_label_head_is_refused_and_nothing_is_left(tmp_path):
    fake_model_folder(tmp_path / "model")
    save_file({"projector.weight": torch.ones(3)}, tmp_path / "model" / "model.safetensors")
    with pytest.raises(ValueError, match="no label head"):
        write_refitted_model(tmp_path / "model", tmp_path / "out", nn.Linear(8, 76), np.array([1]), {})
    fake_model_folder(tmp_path / "other")
    with pytest.raises(ValueError, match=r"is torch.float32 \(76, 8\); the refitted head's is torch.float32 \(76, 4\)"):
        write_refitted_model(tmp_path / "other", tmp_path / "out", nn.Linear(4, 76), np.array([1]), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other"]


@pytest.mark.parametrize("case", ["not a model", "out exists"])
def test_the_script_stops_with_exit_3_and_a_sentence(tmp_path, case):
    model = tmp_path / "model"
    if case == "not a model":
        model.mkdir()
    else:
        fake_model_folder(model)
        (tmp_path / "out").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_label_head.py"), str(model), "--signals", "x",
                           "--ptbxl", "y", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert ("not a model folder" if case == "not a model" else "exists") in done.stderr
