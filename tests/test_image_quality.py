"""The image quality head: a picture's noise, read as the signal-quality heads read the signal, fills the noise slots
of a picture (it used to leave them blank); the fit imitates the signal heads on renders of training records only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgllm import read_ecg
from ecgllm.io.leads import STANDARD_12
from ecgllm.io.record import ECG
from ecgllm.models import EcgLanguageModel
from ecgllm.models.image_encoder import ImageEncoder, ImageEncoderConfig
from ecgllm.models.image_quality import IMAGE_QUALITY_FILE, ImageQuality, page_descriptors, pair_fingerprint
from ecgllm.render import render_ecg
from ecgllm.training.distill_image import save_image_encoder
from ecgllm.training.image_quality import fill_missing_leads, fit_head, fit_image_quality
from ecgllm.training.model_setup import attach_image_encoder
from ecgllm.training.signal_quality import fit_signal_quality
from tests.conftest import PTBXL_1, SHARED, needs_shared
from tests.test_images import TINY_IMAGE
from tests.test_pretrain_encoder import subset  # noqa: F401  (a fixture: PTB-XL records of every fold, cached)
from tests.test_signal_quality import FS, model_naming_noise, synthetic
from tests.tiny_models import tiny_llm

NOISE_QUESTION = "Does this ECG show baseline drift in lead V2?"


def _model_reading_pictures(folder, tiny_tokenizer, head_probability: float | None):
    """A tiny model with fitted signal-quality heads and an image encoder; with ``head_probability``, an image
    quality head that answers that probability for every noise entry of any picture."""
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = model_naming_noise(folder, tiny_tokenizer)
    signals, noise = synthetic(120, seed=0)
    fit_signal_quality(model.label_tokens.quality, signals, np.ones(signals.shape[:2], bool), noise, FS)
    run = folder / "img"
    run.mkdir()
    student = ImageEncoder(ImageEncoderConfig(n_tokens=4, dim=model.encoder.dim, **TINY_IMAGE))
    save_image_encoder(run, student, {"teacher": "test"})
    attach_image_encoder(model, run, processor)
    assert model.image_quality is None  # a head belongs to the folder whose signal heads it imitates, not the run's
    if head_probability is not None:
        n_features = page_descriptors(student.encode(torch.zeros(1, 1, 64, 96), keep=ImageQuality.layers)[1]).shape[1]
        n_entries = model.label_tokens.quality.n_entries
        logit = float(np.log(head_probability / (1 - head_probability)))
        model.set_image_quality(ImageQuality(np.zeros(n_features), np.ones(n_features),
                                             np.zeros((n_features, n_entries)), np.full(n_entries, logit),
                                             pair_fingerprint(model.image_encoder, model.label_tokens.quality)))
    return model.eval(), processor


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "page.png"
    render_ecg(read_ecg(PTBXL_1), augment=False, seed=3).image.save(path)
    return read_ecg(path)


def test_the_fit_recovers_the_signal_heads_logits_from_descriptors_they_depend_on():
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 0.5, (12, 5)), rng.normal(-2, 1, 5)
    descriptors = rng.normal(3, 2, (400, 12))
    probability = lambda x: 1 / (1 + np.exp(-((x - 3) / 2 @ weight + bias)))  # noqa: E731
    head, penalty = fit_head(descriptors, probability(descriptors), "pair")
    new = rng.normal(3, 2, (200, 12))
    predicted = head.logits(torch.from_numpy(new)).numpy()
    truth = np.log(probability(new) / (1 - probability(new)))
    assert penalty > 0 and np.corrcoef(predicted.ravel(), truth.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="fitted on 12 page descriptors, given 11"):
        head.logits(torch.from_numpy(new[:, :11]))


def test_a_lead_the_record_lacks_takes_the_records_probability_of_that_kind():
    noise = np.array([[0.1, 0.2, np.nan, 0.7, np.nan, 0.9]])  # two kinds x (record, lead 1, lead 2)
    assert np.array_equal(fill_missing_leads(noise, 2), [[0.1, 0.2, 0.1, 0.7, 0.7, 0.9]])


def test_a_picture_gets_the_heads_noise_in_its_slots_a_signal_keeps_the_signal_heads(tmp_path, tiny_tokenizer, photo):
    blank, processor = _model_reading_pictures(tmp_path / "blank", tiny_tokenizer, None)
    model, _ = _model_reading_pictures(tmp_path / "head", tiny_tokenizer, 0.9)
    signal = ECG(synthetic(1, seed=5)[0][0], FS, list(STANDARD_12), {})
    asked = [{"role": "user", "content": NOISE_QUESTION}]
    batch = processor([asked], [[signal, photo]], train=False)
    with torch.no_grad():
        _, image_noise = model.encode_with_image_noise(batch["ecg"], batch["ecg_mask"], batch["images"],
                                                      batch["ecg_is_image"])
        assert image_noise.shape == (1, model.label_tokens.quality.n_entries)
        assert torch.allclose(image_noise, torch.full_like(image_noise, 0.9))
        noise = model._noise(batch["ecg"], batch["ecg_mask"], batch["ecg_is_image"], image_noise, 2, "cpu")
        assert torch.equal(noise[0], model.label_tokens.quality(batch["ecg"], batch["ecg_mask"])[0])  # the signal
        assert torch.allclose(noise[1], torch.full_like(noise[1], 0.9))
        assert blank.encode_with_image_noise(batch["ecg"], batch["ecg_mask"], batch["images"],
                                             batch["ecg_is_image"])[1] is None
        # the picture's noise reaches the prompt: the same weights answer otherwise with the head than without
        only_picture = processor([asked], [[photo]], train=False)
        with_head = model.embed(only_picture["input_ids"], only_picture["ecg"], only_picture["ecg_mask"],
                                only_picture["images"], only_picture["ecg_is_image"], only_picture["ecg_named"])
        blank.load_state_dict(model.state_dict())
        without = blank.embed(only_picture["input_ids"], only_picture["ecg"], only_picture["ecg_mask"],
                              only_picture["images"], only_picture["ecg_is_image"], only_picture["ecg_named"])
    assert only_picture["ecg_named"].max() > 0 and not torch.allclose(with_head, without)


def test_the_head_is_saved_with_the_model_and_must_fit_its_signal_heads(tmp_path, tiny_tokenizer, photo):
    model, processor = _model_reading_pictures(tmp_path, tiny_tokenizer, 0.8)
    model.save_pretrained(tmp_path / "saved", processor)
    assert (tmp_path / "saved" / IMAGE_QUALITY_FILE).exists()
    loaded = EcgLanguageModel.from_pretrained(tmp_path / "saved", llm=tiny_llm(len(tiny_tokenizer)))
    assert loaded.image_quality is not None
    assert np.array_equal(loaded.image_quality.bias, model.image_quality.bias)
    head = loaded.image_quality
    fitted_bias = loaded.label_tokens.quality.record_bias.clone()
    with torch.no_grad():  # other signal-quality heads than those it imitates: the head is refused
        loaded.label_tokens.quality.record_bias += 1.0
    with pytest.raises(ValueError, match="fitted for another image encoder or other signal-quality heads"):
        loaded.set_image_quality(head)
    with torch.no_grad():
        loaded.label_tokens.quality.record_bias.copy_(fitted_bias)
    loaded.set_image_quality(head)
    unrecorded = ImageQuality(head.center, head.scale, head.weight, head.bias, "")
    with pytest.raises(ValueError, match="records no image encoder"):
        loaded.set_image_quality(unrecorded)
    attach_image_encoder(loaded, tmp_path / "img", processor)  # another image encoder: the head read the old one's
    assert loaded.image_quality is None
    loaded.save_pretrained(tmp_path / "saved", processor)  # saved again without it: no stale head stays behind
    assert not (tmp_path / "saved" / IMAGE_QUALITY_FILE).exists()
    with pytest.raises(ValueError, match="inconsistent shapes"):
        ImageQuality(np.zeros(3), np.ones(3), np.zeros((2, 4)), np.zeros(4), "pair")


def test_a_model_cast_to_bf16_reads_a_pictures_noise_as_in_float32(tmp_path, tiny_tokenizer, photo):
    model, processor = _model_reading_pictures(tmp_path, tiny_tokenizer, None)
    rng = np.random.default_rng(0)
    n_features = len(page_descriptors(model.image_encoder.encode(torch.zeros(1, 1, 64, 96),
                                                                 keep=ImageQuality.layers)[1])[0])
    n_entries = model.label_tokens.quality.n_entries
    model.set_image_quality(ImageQuality(np.zeros(n_features), np.full(n_features, 0.05),
                                         rng.normal(0, 0.3, (n_features, n_entries)), np.zeros(n_entries),
                                         pair_fingerprint(model.image_encoder, model.label_tokens.quality)))
    pixels = processor.prepare_images([photo])
    is_image = torch.tensor([True])
    with torch.no_grad():
        full = model.encode_with_image_noise(None, None, pixels, is_image)[1]
        half = model.to(torch.bfloat16).encode_with_image_noise(None, None, pixels, is_image)[1]
    assert full.std() > 0.05  # a head whose output depends on the page
    assert torch.allclose(half, full, atol=1e-5)
    with pytest.raises(ValueError, match="before casting"):
        model.set_image_quality(model.image_quality)


@needs_shared
def test_fitting_renders_training_records_only_and_reports_held_out_noise(subset, tmp_path, tiny_tokenizer):  # noqa: F811
    from ecgllm.datasets.split_policy import load_policy

    root, ids = subset
    model, _ = _model_reading_pictures(tmp_path, tiny_tokenizer, None)
    head, report = fit_image_quality(model, str(root / "cache"), str(SHARED / "ptbxl"), "mv", n_train=24,
                                     n_held_out=24, workers=1, progress=False)
    assert head.n_entries == model.label_tokens.quality.n_entries
    assert report["n_train"] == len(report["train_records"]) == 24 and report["held_out"]["n"] > 0
    assert set(report["train_folds"]) <= set(range(1, 9))  # folds 1-8 only: fold 9 checks it, fold 10 is the test
    assert not set(report["train_records"]) & load_policy().fit_forbidden  # no ECG-QA valid or test patient
    model.set_image_quality(head)  # fits the model it was fitted for
