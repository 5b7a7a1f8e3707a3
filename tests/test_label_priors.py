"""Balanced named-label probabilities: each named entry's probability shifted by its training prevalence."""

from __future__ import annotations

import numpy as np
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
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2)
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
    fresh = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2)
    fresh.load_state(state)
    assert fresh.priors_fitted and torch.equal(fresh.named_prior_logit, tokens.named_prior_logit)
    old = {k: v for k, v in state.items() if not k.startswith("named_prior")}  # a checkpoint from before priors
    older = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2)
    older.load_state(old)
    assert not older.priors_fitted


def test_a_blank_noise_slot_stays_blank_after_the_shift():
    torch.manual_seed(1)
    quality = SignalQuality(STANDARD_12)
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=2, quality=quality)
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
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=1)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        tokens.fit_priors(torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64), records=4)
    with pytest.raises(ValueError, match="2 prevalences for 3 named entries"):
        tokens.fit_priors(torch.tensor([0.5, 0.5], dtype=torch.float64), records=4)
    with pytest.raises(ValueError, match="need named_label_tokens"):
        LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1).fit_priors(torch.tensor([0.5] * 3), records=4)


def test_prevalences_are_counted_from_the_training_records_labels_and_noise_columns():
    ptbxl = PTBXL.load(FIXTURES / "ptbxl_train")
    table = ptbxl.table
    ids = [int(i) for i in table.index[:40]]
    quality = SignalQuality(STANDARD_12)
    tokens = LabelTokens(in_dim=4, n_labels=3, hidden=HIDDEN, k=1, named=1, quality=quality)
    codes = ["NORM", "SR", "MI"]  # two statements and a superclass
    prevalence, records = named_prevalence(tokens, codes, set(ids) | {10 ** 9}, ptbxl)  # one id PTB-XL lacks
    assert records == len(ids) and prevalence.shape == (3 + quality.n_entries,)
    _, classes, y = ptbxl.label_matrix("all", np.array(ids))
    norm = y[:, classes.index("NORM")].sum()
    assert float(prevalence[0]) == pytest.approx((norm + 0.5) / (len(ids) + 1))
    _, supers, ysup = ptbxl.label_matrix("superclass", np.array(ids))
    assert float(prevalence[2]) == pytest.approx((ysup[:, supers.index("MI")].sum() + 0.5) / (len(ids) + 1))
    known = [i for i in ids if bool(table.at[i, "has_official_metadata"])]
    noise = noise_leads_table(table, known, quality.leads)
    names = quality.entry_names()
    v1 = names.index("static noise in lead V1")
    expected = (noise[:, quality.leads.index("V1"), 1].sum() + 0.5) / (len(known) + 1)
    assert float(prevalence[3 + v1]) == pytest.approx(expected)
    any_noise = names.index("any kind of noises")
    assert float(prevalence[3 + any_noise]) == pytest.approx((noise.any((1, 2)).sum() + 0.5) / (len(known) + 1))
    with pytest.raises(ValueError, match="not PTB-XL statements"):
        named_prevalence(tokens, ["NORM", "SR", "NOTACODE"], set(ids), ptbxl)
    with pytest.raises(ValueError, match="none of the 1 training records"):
        named_prevalence(tokens, codes, {10 ** 9}, ptbxl)
