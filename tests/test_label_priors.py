"""Balanced named-label probabilities: each named entry's probability shifted by its training prevalence."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from ecgllm.datasets.ecgqa_attributes import noise_leads_table
from ecgllm.datasets.ptbxl import PTBXL
from ecgllm.io.leads import STANDARD_12
from ecgllm.models.label_tokens import NOT_NAMED, LabelTokens
from ecgllm.models.signal_quality import SignalQuality
from ecgllm.training.label_priors import named_prevalence
from tests.conftest import FIXTURES

HIDDEN = 8


def slot_probability(tokens: LabelTokens, pooled: torch.Tensor, named: list[int],
                     quality: torch.Tensor | None = None) -> torch.Tensor:
    """The probability each named slot carries, read back through a confidence embedding that copies it."""
    with torch.no_grad():
        tokens.name_embeddings.zero_()
        if tokens.quality is not None:
            tokens.quality_name_embeddings.zero_()
        tokens.named_confidence.weight.fill_(1.0)
        tokens.named_confidence.bias.zero_()
        out = tokens(pooled, torch.tensor([named]), quality)
    return out[0, tokens.k:, 0]


def test_the_shift_puts_every_labels_prevalence_at_one_half():
    torch.manual_seed(0)
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2, balanced=True)
    pooled = torch.randn(1, 4)
    probabilities = torch.sigmoid(tokens.head(pooled))[0].detach()
    before = slot_probability(tokens, pooled, [0, 2])
    assert torch.allclose(before, probabilities[[0, 2]], atol=1e-6)  # not fitted: the classifier's own p
    prevalence = torch.tensor([float(probabilities[0]), 0.02, 0.9], dtype=torch.float64)
    tokens.fit_priors(prevalence, records=50)
    after = slot_probability(tokens, pooled, [0, 2])
    assert after[0] == pytest.approx(0.5, abs=1e-5)  # p equal to its prevalence sits on the threshold
    expected = torch.sigmoid(torch.logit(probabilities[2]) - torch.logit(torch.tensor(0.9)))
    assert after[1] == pytest.approx(float(expected), abs=1e-5)
    assert float(after[1]) < float(probabilities[2])  # a common label needs more than its prevalence
    rare = slot_probability(tokens, pooled, [1, NOT_NAMED])[0]
    assert float(rare) > float(probabilities[1])      # a rare one less
    state = {k: v.clone() for k, v in tokens.state_dict().items()}
    fresh = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2, balanced=True)
    fresh.load_state(state)
    assert fresh.priors_fitted and torch.equal(fresh.named_prior_logit, tokens.named_prior_logit)
    old = {k: v for k, v in state.items() if not k.startswith("named_prior")}  # a checkpoint from before priors
    older = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2, balanced=True)
    older.load_state(old)
    assert not older.priors_fitted
    plain = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2)
    assert not any(k.startswith("named_prior") for k in plain.state_dict())  # resumes of unbalanced runs unchanged
    plain.load_state(old)
    with pytest.raises(ValueError, match="unexpected"):
        plain.load_state(state)  # a balanced checkpoint is not silently read unbalanced
    plain.load_state(state | {"named_prior_records": torch.zeros((), dtype=torch.long)})  # priors never counted
    bigger = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2, quality=SignalQuality(STANDARD_12),
                         balanced=True)
    bigger.load_state(state)  # counted without noise entries: left to be refitted, not an error
    assert not bigger.priors_fitted
    unfitted_keys = state | {"named_prior_records": torch.zeros((), dtype=torch.long)}
    LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2).load_state_dict(unfitted_keys, strict=True)
    cast = copy.deepcopy(tokens).to(torch.bfloat16)
    assert cast.named_prior_logit.dtype == torch.float32 and int(cast.named_prior_records) == 50


def test_a_blank_noise_slot_stays_blank_after_the_shift():
    torch.manual_seed(1)
    quality = SignalQuality(STANDARD_12)
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2, quality=quality, balanced=True)
    entries = 3 + quality.n_entries
    tokens.fit_priors(torch.full((entries,), 0.1, dtype=torch.float64), records=10)
    with torch.no_grad():
        tokens.not_named.fill_(-7.0)
    noise = torch.full((1, quality.n_entries), 0.1)
    noise[0, 5] = float("nan")  # a missing lead
    slots = slot_probability(tokens, torch.randn(1, 4), [3 + 4, 3 + 5], noise)
    assert slots[0] == pytest.approx(0.5, abs=1e-5)
    assert slots[1] == pytest.approx(-7.0)


def test_bad_prevalences_are_refused():
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=1, balanced=True)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        tokens.fit_priors(torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64), records=4)
    with pytest.raises(ValueError, match="2 prevalences for 3 named entries"):
        tokens.fit_priors(torch.tensor([0.5, 0.5], dtype=torch.float64), records=4)
    with pytest.raises(ValueError, match="need named_label_tokens"):
        LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, balanced=True)
    with pytest.raises(ValueError, match="not balanced"):
        LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=1).fit_priors(torch.tensor([0.5] * 3), records=4)


class FakePTBXL:
    """A PTB-XL stand-in: labels from a dict, and noise columns where each (noise, lead) has its own count."""

    def __init__(self, n: int, labels: dict[str, list[int]], superclasses: dict[str, list[int]]) -> None:
        self.n, self.labels, self.superclasses = n, labels, superclasses
        columns = {"baseline_drift": 0, "static_noise": 1, "burst_noise": 2, "electrodes_problems": 3}
        rows = []
        for record in range(n):
            row = {"has_official_metadata": record != n - 1}  # the last record's noise is unknown
            for column, k in columns.items():  # kind k in lead l on the first 1 + 12 k + l records
                leads = [lead for l, lead in enumerate(STANDARD_12) if record < 1 + 12 * k + l]
                row[column] = ",".join(leads).upper() if leads else None
            rows.append(row)
        self.table = pd.DataFrame(rows, index=pd.Index(range(1, n + 1), name="ecg_id"))

    def label_matrix(self, kind: str, ids: np.ndarray):
        source = self.labels if kind == "all" else self.superclasses
        classes = list(source)
        y = np.array([[int(i) in source[c] for c in classes] for i in ids], dtype=np.uint8)
        return ids, classes, y


def test_prevalences_follow_the_named_vocabulary_entry_by_entry():
    n = 60
    ptbxl = FakePTBXL(n, labels={"SR": list(range(1, 31)), "NORM": [1, 2, 3]},
                      superclasses={"NORM": list(range(1, 11)), "MI": [4]})
    quality = SignalQuality(STANDARD_12)
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=1, quality=quality, balanced=True)
    prevalence, records = named_prevalence(tokens, ["NORM", "SR"], ["NORM"], set(range(1, n + 1)) | {10 ** 9}, ptbxl)
    assert records == n and prevalence.shape == (3 + quality.n_entries,)
    smoothed = lambda positives, total: (positives + 0.5) / (total + 1)  # noqa: E731
    # the statement NORM and the superclass NORM are different outputs with different counts
    assert prevalence[:3].tolist() == pytest.approx([smoothed(3, n), smoothed(30, n), smoothed(10, n)])
    known = n - 1
    kinds = ["baseline drift", "static noise", "burst noise", "electrodes problems"]
    for entry, name in enumerate(quality.entry_names()):
        kind, _, lead = name.partition(" in lead ")
        if kind == "any kind of noises":
            positives = [min(1 + 12 * 3 + STANDARD_12.index(lead), known) if lead else min(1 + 12 * 3 + 11, known)]
        else:
            k = kinds.index(kind)
            positives = [min(1 + 12 * k + (STANDARD_12.index(lead) if lead else 11), known)]
        assert float(prevalence[3 + entry]) == pytest.approx(smoothed(positives[0], known)), name
    with pytest.raises(ValueError, match="not PTB-XL all labels"):
        named_prevalence(tokens, ["NORM", "NOTACODE"], ["NORM"], set(range(1, n + 1)), ptbxl)
    with pytest.raises(ValueError, match="none of the 1 training records"):
        named_prevalence(tokens, ["NORM", "SR"], ["NORM"], {10 ** 9}, ptbxl)


def test_prevalences_of_real_ptbxl_rows():
    ptbxl = PTBXL.load(FIXTURES / "ptbxl_train")
    ids = [int(i) for i in ptbxl.table.index]
    quality = SignalQuality(STANDARD_12)
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=1, quality=quality, balanced=True)
    prevalence, records = named_prevalence(tokens, ["NORM", "SR"], ["MI"], set(ids), ptbxl)
    _, classes, y = ptbxl.label_matrix("all", np.array(ids))
    assert records == len(ids)
    assert float(prevalence[1]) == pytest.approx((y[:, classes.index("SR")].sum() + 0.5) / (len(ids) + 1))
    known = [i for i in ids if bool(ptbxl.table.at[i, "has_official_metadata"])]
    noise = noise_leads_table(ptbxl.table, known, quality.leads)
    any_noise = quality.entry_names().index("any kind of noises")
    assert float(prevalence[3 + any_noise]) == pytest.approx((noise.any((1, 2)).sum() + 0.5) / (len(known) + 1))


def test_a_balanced_model_folder_needs_its_priors(tmp_path, tiny_tokenizer):
    from ecgllm.models import EcgLanguageModel
    from ecgllm.models.configuration import EcgLMConfig
    from ecgllm.training.model_setup import build_model
    from ecgllm.models.processor import ProcessorConfig
    from ecgllm.signal import PrepConfig
    from tests.test_models import encoder_run_with_head
    from tests.tiny_models import tiny_llm

    with pytest.raises(ValueError, match="balanced_named_labels needs named_label_tokens"):
        EcgLMConfig(label_tokens=1, balanced_named_labels=True)
    kwargs = {"widths": [16, 32], "n_tokens": 4}
    encoder_run_with_head(tmp_path / "enc", kwargs, seed=4)
    config = EcgLMConfig(llm="tiny", encoder_kwargs=kwargs, encoder_init=str(tmp_path / "enc"), label_tokens=1,
                         named_label_tokens=1, balanced_named_labels=True, encoder_policy="frozen",
                         lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    model, processor = build_model(config, ProcessorConfig(prep=PrepConfig(normalize="center").to_dict()),
                                   llm=tiny_llm(len(tiny_tokenizer)), tokenizer=copy.deepcopy(tiny_tokenizer))
    model.save_pretrained(tmp_path / "unfitted", processor)
    with pytest.raises(ValueError, match="holds no fitted priors"):
        EcgLanguageModel.from_pretrained(tmp_path / "unfitted", llm=tiny_llm(len(tiny_tokenizer)))
    entries = model.label_tokens.named_prior_logit.shape[0]
    model.label_tokens.fit_priors(torch.full((entries,), 0.2, dtype=torch.float64), records=7)
    model.save_pretrained(tmp_path / "fitted", processor)
    loaded = EcgLanguageModel.from_pretrained(tmp_path / "fitted", llm=tiny_llm(len(tiny_tokenizer)))
    assert loaded.label_tokens.priors_fitted and int(loaded.label_tokens.named_prior_records) == 7
