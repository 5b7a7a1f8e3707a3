"""Signal-quality heads: the noise features, the fit, the named noise slots of the model, and the training stage
that fits them on its own records."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from ecgllm.datasets.ecgqa_attributes import noise_leads_table
from ecgllm.io.leads import STANDARD_12
from ecgllm.models import EcgLanguageModel, EcgProcessor
from ecgllm.models.configuration import EcgLMConfig
from ecgllm.models.label_tokens import NOT_NAMED
from ecgllm.models.processor import ProcessorConfig
from ecgllm.models.signal_quality import N_FEATURES, QUALITY_KINDS, SignalQuality, quality_features
from ecgllm.training.model_setup import build_model
from ecgllm.training.signal_quality import fit_signal_quality
from tests.conftest import FIXTURES, make_training_workspace
from tests.test_models import encoder_run_with_head, logits_of
from tests.tiny_models import tiny_llm

FS = 100.0


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 12, 1000] beats plus, on random leads of random records, baseline drift (a slow wander) or static noise
    (broadband hiss); ``noise`` [n, 12, 4] says where (electrode problems: never)."""
    rng = np.random.default_rng(seed)
    t = np.arange(1000) / FS
    beats = np.exp(-((t[None, :] % 0.8 - 0.4) ** 2) / 2e-4)  # one narrow peak every 0.8 s
    signals = np.repeat(beats[None], n, 0) * rng.uniform(0.5, 1.5, (n, 12, 1)) + rng.normal(0, 0.01, (n, 12, 1000))
    noise = np.zeros((n, 12, 4), dtype=bool)
    for record in range(n):
        kind = rng.integers(0, 3)  # 0 clean, 1 drift, 2 static noise
        if kind == 0:
            continue
        leads = rng.choice(12, size=rng.integers(1, 13), replace=False)
        for lead in leads:
            if kind == 1:
                signals[record, lead] += 0.6 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.uniform(0, 6))
            else:
                signals[record, lead] += rng.normal(0, 0.15, 1000)
        noise[record, leads, kind - 1] = True
    signals -= signals.mean(-1, keepdims=True)  # centred, as the processor prepares them
    return signals.astype(np.float32), noise


def model_naming_noise(folder, tiny_tokenizer):
    """A tiny model (frozen random encoder with a 3-label head, LoRA) whose named slots include the noise entries of
    its signal-quality heads, not yet fitted; and its processor."""
    from ecgllm.signal import PrepConfig

    kwargs = {"widths": [16, 32], "n_tokens": 4}
    encoder_run_with_head(folder / "enc", kwargs, seed=4)
    config = EcgLMConfig(llm="tiny", encoder_kwargs=kwargs, encoder_init=str(folder / "enc"), label_tokens=1,
                         named_label_tokens=2, signal_quality=True, encoder_policy="frozen",
                         lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    torch.manual_seed(0)
    return build_model(config, ProcessorConfig(prep=PrepConfig(normalize="center").to_dict()),
                       llm=tiny_llm(len(tiny_tokenizer)), tokenizer=copy.deepcopy(tiny_tokenizer))


@pytest.fixture(scope="module")
def fitted() -> SignalQuality:
    signals, noise = synthetic(240, seed=0)
    quality = SignalQuality(STANDARD_12)
    counts = fit_signal_quality(quality, signals, np.ones(signals.shape[:2], bool), noise, FS)
    assert counts["electrodes problems"] == 0 and counts["any kind of noises"] == int(noise.any((1, 2)).sum())
    return quality


def test_features_see_drift_and_hiss():
    signals, noise = synthetic(40, seed=1)
    features = quality_features(torch.from_numpy(signals), FS).numpy()
    assert features.shape == (40, 12, N_FEATURES) and np.isfinite(features).all()
    slow_share, fast_share = features[..., 0], features[..., 6]  # power below 0.3 Hz, above 30 Hz
    assert slow_share[noise[..., 0]].min() > np.median(slow_share[~noise.any(-1)])
    assert fast_share[noise[..., 1]].min() > np.median(fast_share[~noise.any(-1)])


def test_fitted_heads_find_the_noise_on_new_records_and_the_kind_never_seen_stays_rare(fitted):
    signals, noise = synthetic(120, seed=2)
    with torch.no_grad():
        p = fitted(torch.from_numpy(signals), torch.ones(120, 12, dtype=torch.bool)).numpy()
    p = p.reshape(120, len(QUALITY_KINDS), 13)  # kind-major: the record, then its 12 leads
    for kind in (0, 1):
        assert roc_auc_score(noise[..., kind].reshape(-1), p[:, kind, 1:].reshape(-1)) > 0.95
        assert roc_auc_score(noise[..., kind].any(1), p[:, kind, 0]) > 0.95
    assert p[:, 3].max() < 0.01  # electrode problems: no training record had them, so its base rate
    names = fitted.entry_names()
    assert len(names) == fitted.n_entries == p.shape[1] * p.shape[2]
    assert names[0] == "baseline drift" and names[1] == "baseline drift in lead I" and names[13] == "static noise"


def test_a_missing_lead_leaves_its_entries_blank_and_the_others_as_they_were(fitted):
    signals, _ = synthetic(3, seed=6)
    full = torch.ones(3, 12, dtype=torch.bool)
    with torch.no_grad():
        before = fitted(torch.from_numpy(signals), full).reshape(3, len(QUALITY_KINDS), 13)
        signals[1, 4] = 0.0  # lead aVL of record 1 absent: a zero row, as `prepare` writes it
        mask = full.clone()
        mask[1, 4] = False
        after = fitted(torch.from_numpy(signals), mask).reshape(3, len(QUALITY_KINDS), 13)
        mask[2] = False  # record 2 has no lead at all
        nothing = fitted(torch.from_numpy(signals), mask).reshape(3, len(QUALITY_KINDS), 13)
    assert after[1, :, 1 + 4].isnan().all()
    assert torch.isfinite(after[1, :, [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12]]).all()
    assert torch.equal(after[[0, 2]], before[[0, 2]])
    assert nothing[2].isnan().all() and torch.equal(nothing[0], before[0])
    # the fit leaves absent leads out instead of failing on them
    train, noise = synthetic(60, seed=7)
    masks = np.ones((60, 12), bool)
    train[:10, 3], masks[:10, 3] = 0.0, False
    fit_signal_quality(SignalQuality(STANDARD_12), train, masks, noise, FS)


def test_the_fitted_numbers_stay_fp32_when_the_model_is_cast(fitted):
    cast = copy.deepcopy(fitted).to(torch.bfloat16)
    assert all(buffer.dtype == torch.float32 for buffer in cast.buffers())
    assert torch.equal(cast.lead_scale, fitted.lead_scale)


def test_heads_refuse_signals_prepared_at_another_rate(fitted):
    fitted.check_rate(FS, "here")
    with pytest.raises(ValueError, match="here: the noise heads were fitted on 100 Hz signals, but 500 Hz"):
        fitted.check_rate(500.0, "here")
    SignalQuality(STANDARD_12).check_rate(500.0, "unfitted heads have no rate yet")


def test_an_unfitted_head_refuses_to_answer():
    with pytest.raises(RuntimeError, match="not fitted"):
        SignalQuality(STANDARD_12)(torch.zeros(1, 12, 1000), torch.ones(1, 12, dtype=torch.bool))


def test_noise_columns_are_read_per_lead_as_ecg_qa_reads_them():
    table = pd.DataFrame({"baseline_drift": [" , V1-V3", None], "static_noise": ["alles", "noisy recording"],
                          "burst_noise": [None, "I,II"], "electrodes_problems": [None, None]}, index=[7, 9])
    out = noise_leads_table(table, [9, 7], list(STANDARD_12))
    assert out.shape == (2, 12, 4)
    assert out[1, :, 1].all() and out[1, [6, 7, 8], 0].all() and out[1, :, 0].sum() == 3
    assert not out[0, :, 1].any()  # a column naming no lead is no noise
    assert out[0, [0, 1], 2].all() and out[0, :, 2].sum() == 2


def test_a_named_noise_fills_its_slot_with_the_heads_probability_and_survives_save_load(tmp_path, tiny_tokenizer,
                                                                                        fitted):
    from ecgllm.io.record import ECG

    model, processor = model_naming_noise(tmp_path, tiny_tokenizer)
    names = processor.config.named_labels
    assert names[:3] == ["atrial fibrillation", "normal ecg", "left ventricular hypertrophy"]
    assert names[3:] == model.label_tokens.quality.entry_names()
    model.label_tokens.quality.load_state_dict(fitted.state_dict())
    signals, noise = synthetic(1, seed=5)
    ecg = ECG(signals[0], FS, list(STANDARD_12), {})
    asked = [{"role": "user", "content": "Does this ECG show baseline drift in lead V2 or atrial fibrillation?"},
             {"role": "assistant", "content": "yes"}]
    batch = processor([asked], [[ecg]])
    entry = 3 + names[3:].index("baseline drift in lead V2")
    assert batch["ecg_named"].tolist() == [[entry, 0]]
    with torch.no_grad():
        model.label_tokens.named_confidence.weight.fill_(1.0)
        model.label_tokens.not_named.fill_(0.5)
        p = model.label_tokens.quality(batch["ecg"], batch["ecg_mask"])[0, entry - 3]
        pooled = model.encoder.pool(model.encoder(batch["ecg"], batch["ecg_mask"]))
        tokens = model.label_tokens(pooled, batch["ecg_named"], model.label_tokens.quality(batch["ecg"],
                                                                                           batch["ecg_mask"]))[0]
        expected = p * model.label_tokens.quality_name_embeddings[entry - 3] + model.label_tokens.named_slots[0] + p
        assert torch.allclose(tokens[1], expected, atol=1e-5)
        no_signal = model.label_tokens(pooled, batch["ecg_named"], torch.full((1, fitted.n_entries), float("nan")))
        assert torch.allclose(no_signal[0, 1], torch.full_like(no_signal[0, 1], 0.5))  # a picture: blank slot
        assert torch.allclose(no_signal[0, 2], tokens[2])  # the statement slot does not depend on the signal
    assert model.label_tokens.quality_name_embeddings.norm(dim=-1).min() > 0
    before = logits_of(model.eval(), batch)
    model.save_pretrained(tmp_path / "saved", processor)
    loaded = EcgLanguageModel.from_pretrained(tmp_path / "saved", llm=tiny_llm(len(tiny_tokenizer)))
    loaded_processor = EcgProcessor.from_pretrained(tmp_path / "saved")
    assert loaded_processor.config.named_labels == names
    assert torch.allclose(before, logits_of(loaded, loaded_processor([asked], [[ecg]])), atol=1e-5)
    with pytest.raises(ValueError, match="signal_quality needs named_label_tokens"):
        EcgLMConfig(label_tokens=1, signal_quality=True)
    with pytest.raises(ValueError, match="beyond this model's"):
        model.label_tokens(pooled, torch.tensor([[len(names), NOT_NAMED]]))
    # pictures have no signal: in a mixed prompt their noise rows are blank, the signal's are the heads'
    mixed = model._noise(batch["ecg"], batch["ecg_mask"], torch.tensor([True, False]), None, 2, "cpu")
    assert mixed[0].isnan().all()
    assert torch.equal(mixed[1], model.label_tokens.quality(batch["ecg"], batch["ecg_mask"])[0])
    # a folder whose heads were never fitted is refused, not served with blank noise slots
    (tmp_path / "again").mkdir()
    unfitted, unfitted_processor = model_naming_noise(tmp_path / "again", tiny_tokenizer)
    unfitted.save_pretrained(tmp_path / "unfitted", unfitted_processor)
    with pytest.raises(ValueError, match="no fitted noise heads"):
        EcgLanguageModel.from_pretrained(tmp_path / "unfitted", llm=tiny_llm(len(tiny_tokenizer)))


def test_a_stage_fits_the_heads_on_its_own_records_and_needs_the_metadata(tmp_path, tiny_tokenizer):
    workspace = make_training_workspace(tmp_path, tiny_tokenizer, n_conversations=8)
    kwargs = {"widths": [8, 16], "n_tokens": 4}
    encoder_run_with_head(tmp_path / "enc", kwargs, seed=5)
    recipe = {
        "stage": "instruction", "output_dir": str(tmp_path / "run"),
        "data": {"train": str(workspace / "train.jsonl"), "ecg_cache": str(workspace / "cache")},
        "model": {"llm": str(workspace / "tiny-llm"), "encoder_kwargs": kwargs, "encoder_init": str(tmp_path / "enc"),
                  "encoder_policy": "frozen", "label_tokens": 1, "named_label_tokens": 2, "signal_quality": True,
                  "balanced_named_labels": True, "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}},
        "prep": {"fs": 100.0, "normalize": "center", "window_s": 10.0},
        "optim": {"lr": 0.001, "batch_size": 4, "max_steps": 1}, "seed": 0, "save_every": 1, "log_every": 1,
    }
    path = tmp_path / "quality.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cli = [sys.executable, "-m", "ecgllm.serving.cli", "train", str(path), "--quiet"]
    missing = subprocess.run(cli, capture_output=True, text=True)
    assert missing.returncode != 0 and "set data.ptbxl" in missing.stderr and "Traceback" not in missing.stderr
    done = subprocess.run([c for c in cli if c != "--quiet"] + ["--data.ptbxl", str(FIXTURES / "ptbxl_train")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    trained = {int(e["record_id"]) for line in (workspace / "train.jsonl").read_text().splitlines() if line.strip()
               for e in json.loads(line)["ecgs"]}
    assert f"noise heads fitted on {len(trained)} training records" in done.stdout  # the stage's records, no other
    assert f"from {len(trained)} training records" in done.stdout  # the named-label priors: the same records
    model = EcgLanguageModel.from_pretrained(tmp_path / "run" / "final")
    quality = model.label_tokens.quality
    assert quality.fitted and float(quality.fs) == 100.0
    assert model.label_tokens.priors_fitted and int(model.label_tokens.named_prior_records) == len(trained)
    assert model.label_tokens.quality_name_embeddings.norm(dim=-1).min() > 0
