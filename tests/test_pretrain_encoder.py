"""Encoder pretraining stage on a small real PTB-XL subset: metrics from scores, split discipline, resume."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ecgllm.datasets import PTBXL
from ecgllm.datasets.cache import build_cache
from ecgllm.signal import PrepConfig
from tests.conftest import KILL_SEED, SHARED, kill_once_written, logged, needs_shared


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    if not SHARED.exists() and not os.environ.get("CI"):
        pytest.skip("../shared/data is not available")
    sys.path.insert(0, str(SHARED / "ptbxl"))
    import ptbxl_pack

    root = tmp_path_factory.mktemp("enc")
    ptbxl = PTBXL.load(SHARED / "ptbxl")
    table = ptbxl.table
    ids = [int(i) for fold in range(1, 11) for i in table.index[table.strat_fold == fold][:24]]
    ptbxl_pack.unpack_wfdb(str(SHARED / "ptbxl"), str(root / "wfdb"), ecg_ids=ids)
    paths = [root / "wfdb" / f"records100/{i // 1000 * 1000:05d}/{i:05d}_lr" for i in ids]
    build_cache(paths, table.loc[ids, ["strat_fold"]].reset_index(), root / "cache",
                PrepConfig(fs=100.0, bandpass=None, window_s=10.0), "test", workers=1, progress=False)
    (root / "exclude.tsv").write_text("".join(f"{k}\t{i}\n" for k, i in enumerate(ids[:5])))
    return root, ids


@needs_shared
def test_encoder_pretraining_recipe_and_resume(subset):
    root, ids = subset
    recipe = {"stage": "encoder_pretraining", "output_dir": str(root / "run"), "ecg_cache": str(root / "cache"),
              "ptbxl": str(SHARED / "ptbxl"), "encoder": "resnet1d",
              "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4, "blocks_per_stage": 1},
              "epochs": 2, "batch_size": 32, "exclude_ids_file": str(root / "exclude.tsv"), "valid_every": 2}
    (root / "r.yaml").write_text(yaml.safe_dump(recipe))
    cli = [sys.executable, "-m", "ecgllm.serving.cli", "train", str(root / "r.yaml"), "--quiet"]
    result = subprocess.run(cli, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fold-10 macro AUC" in result.stdout
    out = json.loads((root / "run/result.json").read_text())
    assert 0.0 <= out["super_macro_auc"] <= 1.0 and 0.0 <= out["all71_macro_auc"] <= 1.0
    for key in ("super_macro_auc_ci95", "all71_macro_auc_ci95"):
        low, high = out[key]
        assert 0.0 <= low <= high <= 1.0
    # folds 1-8 minus the excluded file and minus every record of an ECG-QA valid/test patient (split policy)
    from ecgllm.datasets.split_policy import load_policy, read_training_records

    folds_1_8, held_out = set(ids[:8 * 24]), load_policy().fit_forbidden
    expected = folds_1_8 - set(ids[:5]) - held_out
    assert out["train_records"] == len(expected) and out["excluded_records"] == 5
    assert out["excluded_by_split_policy"] == len(folds_1_8 & held_out) > 0
    trained = read_training_records(root / "run")["stages"][-1]["records"]
    assert set(trained) == expected and not set(trained) & held_out
    assert (root / "run/encoder.safetensors").exists()
    from ecgllm.models.card import read_card

    card = read_card(root / "run")
    labels = json.loads((root / "run/labels.json").read_text())
    assert card.kind == "signal_encoder" and card.labels == labels["all71"] + labels["superclass"]
    assert len(card.labels) == 76 and card.label_names["NORM"] == "normal ecg"
    assert card.prep["bandpass"] is None and card.prep["normalize"] == "zscore" and card.pooling == "mean"
    assert card.metrics["super_macro_auc"] == out["super_macro_auc"]
    assert card.provenance.recipe["exclude_ids_file"] == str(root / "exclude.tsv")
    assert {"index.csv", "meta.json", "ptbxl_database.csv"} <= set(card.provenance.data_sha256)
    assert "valid_super_auc" not in out["history"][0] and "valid_super_auc" in out["history"][1]  # valid_every: 2
    # re-running the same recipe resumes from the last finished epoch instead of training again
    again = subprocess.run(cli, capture_output=True, text=True)
    assert again.returncode == 0
    epochs = [m["epoch"] for m in logged(root / "run")]
    assert epochs == [1, 2]
    assert json.loads((root / "run/result.json").read_text())["super_macro_auc"] == out["super_macro_auc"]


CLI = [sys.executable, "-m", "ecgllm.serving.cli", "train"]


def encoder_recipe(root: Path, name: str, **extra) -> Path:
    """Dropout, random crops, mixup and an EMA: every random stream an encoder run draws from."""
    recipe = {"stage": "encoder_pretraining", "output_dir": str(root / name), "ecg_cache": str(root / "cache"),
              "ptbxl": str(SHARED / "ptbxl"), "encoder": "resnet1d",
              "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4, "blocks_per_stage": 1}, "epochs": 3,
              "batch_size": 32, "head_dropout": 0.3, "mixup_alpha": 0.4, "ema_decay": 0.9, "valid_every": 3,
              "threads": 1, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "encoder.safetensors") | {f"head.{k}": v for k, v in
                                                      load_file(run / "head.safetensors").items()}


@needs_shared
def test_a_killed_encoder_run_resumes_to_bit_identical_weights(subset):
    root, _ = subset
    clean = subprocess.run(CLI + [str(encoder_recipe(root, "clean")), "--quiet"], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    kill_after = random.Random(KILL_SEED).choice([1, 2])
    kill_once_written(CLI + [str(encoder_recipe(root, "killed")), "--quiet"],
                      root / "killed" / "checkpoints" / f"epoch-{kill_after:04d}", f"after epoch {kill_after}")
    assert not (root / "killed" / "result.json").exists()
    resumed = subprocess.run(CLI + [str(encoder_recipe(root, "killed")), "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = run_weights(root / "clean"), run_weights(root / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scores = [json.loads((root / run / "result.json").read_text())["super_macro_auc"] for run in ("clean", "killed")]
    assert scores[0] == scores[1]


@needs_shared
def test_an_encoder_stage_trains_on_two_cpu_processes_with_gloo(subset):
    root, _ = subset
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ecgllm.serving.cli", "train",
                             str(encoder_recipe(root, "ddp", epochs=2, valid_every=1)), "--quiet"],
                            capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("fold-10 macro AUC") == 2  # each process reports the result the main one wrote
    history = logged(root / "ddp")
    assert [h["epoch"] for h in history] == [1, 2] and all(h["loss"] > 0 for h in history)  # logged by rank 0 once
    assert {p.name for p in (root / "ddp" / "checkpoints" / "epoch-0002").iterdir()} >= {
        "random_states_0.pkl", "random_states_1.pkl"}  # every process's RNG states
    assert (root / "ddp" / "encoder.safetensors").exists()
    # the schedule stepped once per batch (not once per process), over every batch both processes could share
    n = json.loads((root / "ddp" / "result.json").read_text())["train_records"]
    scheduler = torch.load(root / "ddp" / "checkpoints" / "epoch-0002" / "scheduler.bin", weights_only=False)
    assert scheduler["last_epoch"] == 2 * (n // 32 + (n % 32 >= 2))


@needs_shared
def test_contrastive_stage_trains_resumes_and_starts_the_encoder_stage(subset):
    """ECG-text pretraining on the subset: a finite validation loss each epoch, an encoder run with a card, a
    second call that trains nothing, and an encoder stage that starts from it."""
    from ecgllm.models.card import read_card
    from ecgllm.training.contrastive import ContrastiveConfig, pretrain_contrastive
    from ecgllm.training.pretrain_encoder import EncoderPretrainConfig, pretrain_encoder

    root, ids = subset
    kwargs = {"widths": [8, 16], "n_tokens": 4, "blocks_per_stage": 1}
    config = ContrastiveConfig(output_dir=str(root / "clip"), ecg_cache=str(root / "cache"), ptbxl=str(SHARED / "ptbxl"),
                               encoder_kwargs=kwargs, text_features=16, embed_dim=8, epochs=2, batch_size=16)
    result = pretrain_contrastive(config, progress=False)
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    assert all(h["loss"] > 0 and h["valid_loss"] > 0 for h in result["history"])
    card = read_card(root / "clip")
    assert card.kind == "signal_encoder" and card.prep["normalize"] == "center" and not card.labels
    from ecgllm.datasets.split_policy import load_policy, read_training_records

    trained = set(read_training_records(root / "clip")["stages"][-1]["records"])
    assert trained <= set(ids[:8 * 24]) and not trained & load_policy().fit_forbidden
    assert pretrain_contrastive(config, progress=False)["history"] == result["history"]  # done: nothing trains
    encoder = pretrain_encoder(EncoderPretrainConfig(output_dir=str(root / "from_clip"), ecg_cache=str(root / "cache"),
                                                     ptbxl=str(SHARED / "ptbxl"), encoder_kwargs=kwargs, epochs=1,
                                                     normalize="mv", init_encoder=str(root / "clip")), progress=False)
    assert 0.0 <= encoder["super_macro_auc"] <= 1.0


@needs_shared
def test_encoder_pretraining_under_bf16_autocast(subset):
    """The same stage with `mixed_precision: bf16` (what a GPU run would use; CPU autocast here), crops of
    two lengths, weighted positives and superclasses, and mixup trains to finite losses and saves fp32 weights."""
    from safetensors.torch import load_file

    from ecgllm.training.config import load_encoder_recipe
    from ecgllm.training.pretrain_encoder import pretrain_encoder

    root, _ = subset
    recipe = {"stage": "encoder_pretraining", "output_dir": str(root / "bf16"), "ecg_cache": str(root / "cache"),
              "ptbxl": str(SHARED / "ptbxl"), "encoder": "resnet1d", "device": "auto", "mixed_precision": "bf16",
              "crop_s": [2.5, 5.0], "pos_weight_power": 0.5, "superclass_loss_weight": 4.0, "mixup_alpha": 0.4,
              "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4, "blocks_per_stage": 1},
              "epochs": 1, "batch_size": 32}
    (root / "bf16.yaml").write_text(yaml.safe_dump(recipe))
    result = pretrain_encoder(load_encoder_recipe(root / "bf16.yaml"), progress=False)
    assert result["history"][0]["loss"] > 0 and 0.0 <= result["super_macro_auc"] <= 1.0
    assert {t.dtype for t in load_file(root / "bf16/encoder.safetensors").values()} <= {torch.float32, torch.int64}


def test_macro_auc_uses_scores_and_skips_single_class_columns():
    import numpy as np

    from ecgllm.training.pretrain_encoder import macro_auc

    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.5], [0.6, 0.2, 0.5], [0.4, 0.1, 0.5]])
    assert macro_auc(y, scores) == 1.0  # only column 0 has both classes


def test_macro_auc_interval_is_tight_for_a_perfect_ranking_and_wide_for_noise():
    import numpy as np

    from ecgllm.training.pretrain_encoder import macro_auc_ci95

    rng = np.random.default_rng(0)
    y = (rng.random((300, 3)) < 0.3).astype(float)
    assert macro_auc_ci95(y, y + 0.1 * rng.random(y.shape)) == [1.0, 1.0]
    low, high = macro_auc_ci95(y, rng.random(y.shape))
    assert low < 0.5 < high and high - low > 0.03


def test_positive_weights_lift_rare_labels():
    import numpy as np

    from ecgllm.training.pretrain_encoder import positive_weights

    y = np.zeros((100, 3))
    y[:2, 0] = 1    # a rare statement
    y[:50, 1] = 1   # a common one
    y[:80, 2] = 1   # a majority label: its positives count less
    assert np.allclose(positive_weights(y, 0.5), [7.0, 1.0, 0.5])  # (98 / 2) ** 0.5 = 7, (20 / 80) ** 0.5
    assert np.allclose(positive_weights(y, 0.0), 1.0)


def test_superclass_loss_weight_scales_only_the_last_five_outputs():
    from ecgllm.training.pretrain_encoder import superclass_weights

    cpu = torch.device("cpu")
    assert superclass_weights(76, 1.0, cpu) is None  # plain mean: earlier recipes replay exactly
    weights = superclass_weights(76, 4.0, cpu)
    assert weights.shape == (76,) and (weights[:71] == 1).all() and (weights[71:] == 4).all()


def test_mixup_blends_each_crop_with_its_own_labels():
    import numpy as np

    from ecgllm.training.pretrain_encoder import mixup

    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    crops = labels[:, :1, None].expand(4, 1, 50).clone()  # each crop's value is its first label
    present = torch.ones(4, 1, dtype=torch.bool)
    x, mask, target = mixup(crops, present, labels, 0.4, np.random.default_rng(0))
    assert torch.allclose(x[:, 0, 0], target[:, 0])  # the labels were blended with the same partner and share
    assert not torch.equal(target, labels) and ((target >= 0) & (target <= 1)).all() and mask.all()
    again, _, _ = mixup(crops, present, labels, 0.4, np.random.default_rng(0))
    assert torch.equal(x, again)  # seeded: a resumed run replays the same batches


def test_mixup_keeps_a_lead_present_in_either_crop_and_adds_nothing_from_a_missing_one():
    import numpy as np

    from ecgllm.training.pretrain_encoder import mixup

    crops = torch.full((2, 2, 10), 5.0)  # two crops of two leads; the first crop's second lead is missing
    mask = torch.tensor([[True, False], [True, True]])
    for seed in range(50):  # the first draw that pairs the two crops
        x, mixed, _ = mixup(crops, mask, torch.zeros(2, 1), 0.4, np.random.default_rng(seed))
        if mixed[0, 1]:
            break
    assert mixed.all()  # the second lead is present in the blend: one of its crops has it
    assert (x[:, 1] < 5.0).all() and (x[:, 0] == 5.0).all()  # the missing lead's samples counted as zero


def test_the_encoder_stage_trains_and_scores_with_the_caches_lead_masks():
    """A lead the cache masked reaches the encoder as missing, in training batches and in scoring: what its samples
    hold changes neither the loss nor the scores (it used to be trained as a present, flat lead)."""
    import numpy as np
    from torch import nn

    from ecgllm.models.encoders import build_encoder
    from ecgllm.training.pretrain_encoder import (ClassifierTask, EncoderClassifier, EncoderPretrainConfig,
                                                  PTBXLArrays, score_records)

    rng = np.random.default_rng(0)
    signals = rng.normal(size=(12, 12, 300)).astype(np.float32)
    masks = np.ones((12, 12), dtype=bool)
    masks[::2, 4] = False  # lead V1 (index 4) came off in every other record
    data = PTBXLArrays(ids=np.arange(12), signals=signals, masks=masks, y=rng.integers(0, 2, (12, 3)).astype(np.float32),
                       classes71=["a", "b"], superclasses=["c"], train=np.arange(12), valid=np.arange(12),
                       test=np.arange(12), excluded=0, fs=100.0)
    torch.manual_seed(0)
    model = EncoderClassifier(build_encoder("resnet1d", widths=[8, 16], n_tokens=4, blocks_per_stage=1), 3).eval()
    config = EncoderPretrainConfig(output_dir="unused", ecg_cache="unused", ptbxl="unused", batch_size=4, crop_s=2.0)
    noisy = data.signals.copy()
    noisy[~masks] = 100.0  # garbage where the cache masked a lead

    def losses(arrays: PTBXLArrays) -> list[float]:
        task = ClassifierTask(config, arrays, [200], 100, nn.BCEWithLogitsLoss())
        with torch.no_grad():
            return [task.loss(model, batch).item() for batch in task.batches(0)]

    batch_masks = [batch[1] for batch in ClassifierTask(config, data, [200], 100, nn.BCEWithLogitsLoss()).batches(0)]
    assert sum(int((~m).sum()) for m in batch_masks) == int((~masks).sum())  # every masked lead arrives masked
    assert np.allclose(losses(data), losses(PTBXLArrays(**{**vars(data), "signals": noisy})), atol=1e-6)
    scored, scored_noisy = (score_records(model, s, 200, 100, masks=masks) for s in (signals, noisy))
    assert np.allclose(scored, scored_noisy, atol=1e-6)
    # the check can fail: without the masks, the same garbage moves the scores
    assert not np.allclose(score_records(model, signals, 200, 100), score_records(model, noisy, 200, 100), atol=1e-3)


def test_the_contrastive_stage_and_the_distillation_teacher_read_the_caches_lead_masks():
    """As in the classifier stage: garbage in a lead the cache masked moves neither the contrastive loss (training
    batches and the fold-9 metric) nor the teacher's tokens and logits that image distillation imitates."""
    import contextlib
    from types import SimpleNamespace

    import numpy as np
    from torch import nn

    from ecgllm.models.encoders import build_encoder
    from ecgllm.training.contrastive import ContrastiveConfig, ContrastiveTask, ECGTextModel
    from ecgllm.training.distill_image import teacher_targets

    rng = np.random.default_rng(1)
    signals = rng.normal(size=(8, 12, 300)).astype(np.float32)
    masks = np.ones((8, 12), dtype=bool)
    masks[1::2, 7] = False
    noisy = signals.copy()
    noisy[~masks] = 100.0
    torch.manual_seed(0)
    encoder = build_encoder("resnet1d", widths=[8, 16], n_tokens=4, blocks_per_stage=1).eval()
    model = ECGTextModel(encoder, text_dim=6, embed_dim=5).eval()
    feats, text_ids, rows = rng.normal(size=(8, 6)).astype(np.float32), np.arange(8) % 3, np.arange(8)
    config = ContrastiveConfig(output_dir="unused", ecg_cache="unused", ptbxl="unused", batch_size=4, crop_s=2.0)

    def readings(arrays: np.ndarray) -> list[float]:
        on_cpu = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)  # what the task uses
        task = ContrastiveTask(config, arrays, masks, feats, text_ids, rows, rows, 200, on_cpu)
        with torch.no_grad():
            return [task.loss(model, batch).item() for batch in task.batches(0)] + [task.metrics(model, 0)["valid_loss"]]

    assert np.allclose(readings(signals), readings(noisy), atol=1e-5)
    head = nn.Linear(encoder.dim, 3).eval()
    (tokens, logits), (tokens_noisy, logits_noisy) = (teacher_targets(encoder, head, x, masks) for x in (signals, noisy))
    assert np.allclose(tokens, tokens_noisy, atol=1e-5) and np.allclose(logits, logits_noisy, atol=1e-5)
    unmasked = np.ones_like(masks)  # the check can fail: read as present, the garbage moves the teacher
    assert not np.allclose(teacher_targets(encoder, head, signals, unmasked)[1],
                           teacher_targets(encoder, head, noisy, unmasked)[1], atol=1e-3)


@needs_shared
def test_image_distillation_stage_runs_resumes_and_reports(subset):
    """Renders of the subset → the teacher's tokens; fold-10 renders (clean, distorted) give AUCs; resume."""
    from ecgllm.training.distill_image import ImageDistillConfig, distill_image_encoder
    from ecgllm.training.pretrain_encoder import EncoderPretrainConfig, pretrain_encoder

    root, _ = subset
    teacher = root / "teacher"
    pretrain_encoder(EncoderPretrainConfig(output_dir=str(teacher), ecg_cache=str(root / "cache"),
                                           ptbxl=str(SHARED / "ptbxl"), encoder_kwargs={"widths": [8, 16],
                                           "n_tokens": 4, "blocks_per_stage": 1}, epochs=1, normalize="mv"),
                     progress=False)
    config = ImageDistillConfig(output_dir=str(root / "img"), teacher=str(teacher), ecg_cache=str(root / "cache"),
                                ptbxl=str(SHARED / "ptbxl"), n_tokens=2,
                                image={"height": 64, "width": 96, "widths": [4, 8], "heads": 2},
                                n_train=16, n_eval=24, epochs=1, batch_size=8, workers=1)
    result = distill_image_encoder(config, progress=False)
    for key in ("image_clean_super_macro_auc", "image_augmented_super_macro_auc", "signal_super_macro_auc"):
        assert 0.0 <= result[key] <= 1.0
    assert result["n_train"] == 16 and (root / "img/image_encoder.safetensors").exists()
    assert (root / "img/page_check.safetensors").exists() and 0 < result["page_check"]["typical"] < \
        result["page_check"]["refuse"]  # the run fits its page check on fold-9 renders it never trained on
    from ecgllm.models.page_check import PageCheck

    assert PageCheck.load(root / "img").texture is not None  # with the texture view
    from ecgllm.models.image_encoder import ImageEncoderConfig

    saved = json.loads((root / "img/image_encoder.json").read_text())
    assert ImageEncoderConfig(**saved["config"]).n_tokens == 2 and saved["distillation"]["n_train"] == 16
    again = distill_image_encoder(config, progress=False)  # every epoch done: resumes and trains nothing
    assert again["history"] == result["history"]
    from dataclasses import replace

    from ecgllm.datasets.split_policy import read_training_records

    more = distill_image_encoder(replace(config, output_dir=str(root / "img_more"), init_student=str(root / "img"),
                                         seed=1), progress=False)   # warm start, fresh renders
    assert more["history"][0]["epoch"] == 1
    stages = [s["stage"] for s in read_training_records(root / "img_more")["stages"]]
    assert stages.count("image_distillation") == 2  # its own renders and those of the encoder it started from
    lineage = json.loads((root / "img_more/image_encoder.json").read_text())["continued_from"]
    assert [Path(r["output_dir"]).name for r in lineage] == ["img"]  # the recipes that made its starting weights


def test_a_warm_started_image_encoder_begins_with_the_earlier_weights_and_refuses_another_shape(tmp_path):
    from ecgllm.errors import InputError
    from ecgllm.models.image_encoder import ImageEncoder, ImageEncoderConfig
    from ecgllm.training.distill_image import load_student_init, save_image_encoder

    shape = {"n_tokens": 2, "dim": 8, "height": 64, "width": 96, "widths": [4, 8], "heads": 2}
    torch.manual_seed(0)
    earlier = ImageEncoder(ImageEncoderConfig(**shape))
    made = [{"output_dir": "runs/first"}, {"output_dir": "runs/second"}]
    save_image_encoder(tmp_path, earlier, {"teacher": "test", "distillation": made[1], "continued_from": made[:1]})
    torch.manual_seed(1)
    student = ImageEncoder(ImageEncoderConfig(**shape))
    assert load_student_init(student, tmp_path) == made  # its lineage, first first, then its own recipe
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), earlier.state_dict().values()))
    with pytest.raises(InputError, match=r"another shape \(widths: \[4, 8\] there, \[4, 16\] here\)"):
        load_student_init(ImageEncoder(ImageEncoderConfig(**{**shape, "widths": [4, 16]})), tmp_path)
    with pytest.raises(InputError, match="holds no image encoder"):
        load_student_init(student, tmp_path / "nothing")


@pytest.mark.parametrize("key, value, message", [("crop_s", [2.5, -1], "crop_s"), ("normalize", "raw", "normalize"),
                                                  ("pos_weight_power", -0.5, "pos_weight_power"),
                                                  ("superclass_loss_weight", 0, "superclass_loss_weight"),
                                                  ("mixup_alpha", -1, "mixup_alpha"), ("valid_every", 0, "valid_every"),
                                                  ("init_encoder", "no/such/run", "encoder_contrastive.yaml")])
def test_encoder_recipe_mistakes_are_clear_input_errors(tmp_path, key, value, message):
    """Exit 3 with a sentence, before any data is read (the cache path here does not even exist)."""
    recipe = {"stage": "encoder_pretraining", "output_dir": str(tmp_path / "run"), "ecg_cache": str(tmp_path / "none"),
              "ptbxl": str(tmp_path / "none"), "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4}, key: value}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "train", str(tmp_path / "r.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 3 and message in result.stderr and "Traceback" not in result.stderr


def test_init_encoder_of_another_shape_names_both_configurations(tmp_path):
    from ecgllm.models.encoders import build_encoder
    from ecgllm.training.config import RecipeError
    from ecgllm.training.pretrain_encoder import load_encoder_weights, save_encoder

    save_encoder(tmp_path, build_encoder("resnet1d", widths=[8, 16], n_tokens=4), "resnet1d",
                 {"widths": [8, 16], "n_tokens": 4}, "mv", 100.0)
    with pytest.raises(RecipeError, match=r"does not fit.*'widths': \[8, 16\]"):
        load_encoder_weights(build_encoder("resnet1d", widths=[8, 32], n_tokens=4), str(tmp_path))


def test_contrastive_recipe_checks_its_normalisation_when_read():
    from ecgllm.training.contrastive import ContrastiveConfig

    with pytest.raises(ValueError, match="normalize must be one of"):
        ContrastiveConfig(output_dir="o", ecg_cache="c", ptbxl="p", normalize="raw")


def test_an_encoder_run_whose_card_disagrees_with_its_encoder_is_refused(tmp_path):
    """Every reader of an encoder run (`encoder_source`) checks the run's card.json against the preparation the
    encoder was saved with, as the model loader checks a model folder's: mixed files stop with a sentence."""
    from ecgllm.errors import InputError
    from ecgllm.models.card import ArtifactCard, Provenance, write_card
    from ecgllm.models.encoder_source import encoder_meta, encoder_state
    from ecgllm.models.encoders import build_encoder
    from ecgllm.training.pretrain_encoder import save_encoder

    prep = {"fs": 100.0, "normalize": "center", "bandpass": None, "window_s": 10.0}
    meta = save_encoder(tmp_path, build_encoder("resnet1d", widths=[8, 16], n_tokens=4), "resnet1d",
                        {"widths": [8, 16], "n_tokens": 4}, "mv", 100.0, prep)
    card = ArtifactCard(kind="signal_encoder", prep=meta["prep"], provenance=Provenance(ecgllm_version="t", recipe={}))
    write_card(tmp_path, card)
    assert encoder_meta(tmp_path) == meta and encoder_state(tmp_path)
    write_card(tmp_path, card.model_copy(update={"prep": {**meta["prep"], "bandpass": [1.0, 30.0]}}))
    with pytest.raises(InputError, match="disagree on bandpass"):
        encoder_state(tmp_path)
    write_card(tmp_path, card.model_copy(update={"kind": "image_encoder"}))
    with pytest.raises(InputError, match="describes a image encoder|describes an image encoder"):
        encoder_meta(tmp_path)


def test_an_image_encoder_run_whose_card_reads_another_page_size_is_refused(tmp_path):
    from ecgllm.errors import InputError
    from ecgllm.models.card import ArtifactCard, Provenance, write_card
    from ecgllm.models.image_encoder import ImageEncoder, ImageEncoderConfig, load_image_encoder
    from ecgllm.training.distill_image import save_image_encoder

    shape = {"n_tokens": 2, "dim": 8, "height": 64, "width": 96, "widths": [4, 8], "heads": 2}
    save_image_encoder(tmp_path, ImageEncoder(ImageEncoderConfig(**shape)), {"teacher": "test"})
    card = ArtifactCard(kind="image_encoder", prep={"height": 64, "width": 96},
                        provenance=Provenance(ecgllm_version="t", recipe={}))
    write_card(tmp_path, card)
    assert load_image_encoder(tmp_path)[0].config.width == 96
    write_card(tmp_path, card.model_copy(update={"prep": {"height": 64, "width": 128}}))
    with pytest.raises(InputError, match="disagree on width"):
        load_image_encoder(tmp_path)
