"""Statement notes: for two ECGs, the statements the model's own classifier finds new, gone and still present."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from ecgllm import read_ecg
from ecgllm.models.configuration import EcgLMConfig
from ecgllm.models.processor import EcgProcessor, ProcessorConfig
from ecgllm.models.statement_note import (META_KEY, StatementReader, statement_comparison_note,
                                          statements_above)
from tests.conftest import PTBXL_1
from tests.test_loss_targets import check_targets
from tests.test_models import encoder_run_with_head
from tests.tiny_models import tiny_llm

NEW = [{"role": "user", "content": "What symptoms are newly detected in the second ECG as compared to the first ECG?"},
       {"role": "assistant", "content": "atrial fibrillation"}]
NUMERIC = [{"role": "user", "content": "What numeric features of the second ECG are still abnormal as compared to "
                                       "the first ECG?"}, {"role": "assistant", "content": "none"}]


def test_statements_are_the_askable_codes_at_or_above_the_threshold_by_ecgqa_names():
    codes = ["AFIB", "NORM", "LVH", "SR"]
    # NORM is never asked as a statement; an output beyond the codes (a superclass) is not a statement
    assert statements_above([0.5, 0.9, 0.49, 0.7, 0.99], codes) == ["atrial fibrillation", "sinus rhythm"]
    assert statements_above(np.array([0.1, 0.1, 0.6, 0.1]), codes) == ["left ventricular hypertrophy"]
    assert statements_above([0.0] * 4, codes) == []


def test_the_comparison_names_what_is_new_gone_and_still_present_in_the_second_ecg():
    first, second = ["sinus rhythm", "left ventricular hypertrophy"], ["sinus rhythm", "atrial fibrillation"]
    assert statement_comparison_note(first, second) == (
        "Statements against the first ECG: new: atrial fibrillation. Gone: left ventricular hypertrophy. "
        "Still present: sinus rhythm.")
    assert statement_comparison_note([], []) == ("Statements against the first ECG: new: none. Gone: none. "
                                                 "Still present: none.")
    assert statement_comparison_note(second, first).startswith(  # the order counts
        "Statements against the first ECG: new: left ventricular hypertrophy. Gone: atrial fibrillation.")


def test_the_processor_adds_the_comparison_to_two_ecgs_only_and_never_labels_it(tiny_tokenizer):
    first, second = read_ecg(PTBXL_1), read_ecg(PTBXL_1)
    first.meta[META_KEY], second.meta[META_KEY] = ["sinus rhythm"], ["atrial fibrillation", "sinus rhythm"]
    processor = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, statement_note=1))
    notes = processor.notes(NEW, [first, second])
    assert notes == ["", statement_comparison_note(["sinus rhythm"], ["atrial fibrillation", "sinus rhythm"])]
    check_targets(processor, NEW, ["first ECG", "second ECG"], notes)  # the note is prompt, the answer alone labelled
    prompt = processor.render(NEW[:1], ["first ECG", "second ECG"], add_generation_prompt=True, notes=notes)
    assert prompt.index("new: atrial fibrillation") < prompt.index("What symptoms")
    assert processor.notes(NEW[:1], [first]) is None            # one ECG: nothing to compare
    assert processor.notes(NEW[:1], []) is None                 # the blind probe: no ECG, no note
    assert processor.notes(NUMERIC, [first, second]) is None    # measurements: the measurement notes answer those
    plain = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2))
    assert plain.notes(NEW, [first, second]) is None            # checkpoints without the note: unchanged
    batch = processor([NEW], [[first, second]])
    assert "Gone: none." in processor.tokenizer.decode(batch["input_ids"][0])
    # with measurement notes as well, a numeric comparison keeps its measurement notes alone
    both = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, statement_note=1, measurement_note=3))
    assert "Statements against" not in " ".join(both.notes(NUMERIC, [first, second]))
    assert both.notes(NEW, [first, second]) == notes


def test_without_statements_or_a_reader_the_processor_says_how_to_load_the_model(tiny_tokenizer):
    processor = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, statement_note=1))
    with pytest.raises(RuntimeError, match="load_checkpoint"):
        processor.notes(NEW, [read_ecg(PTBXL_1), read_ecg(PTBXL_1)])


def test_versions_are_checked_in_recipes_and_saved_processors(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="statement_note must be 0"):
        EcgLMConfig(label_tokens=6, statement_note=2)
    with pytest.raises(ValueError, match="needs label_tokens"):
        EcgLMConfig(statement_note=1)
    EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, statement_note=1)).save_pretrained(tmp_path)
    assert EcgProcessor.from_pretrained(tmp_path).config.statement_note == 1
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    (tmp_path / "processor_config.json").write_text(json.dumps({**saved, "statement_note": 5}))
    with pytest.raises(ValueError, match="statement_note 5"):
        EcgProcessor.from_pretrained(tmp_path)


def _model_with_statement_notes(tmp_path, tiny_tokenizer):
    from ecgllm.signal import PrepConfig
    from ecgllm.training.model_setup import build_model

    kwargs = {"widths": [16, 32], "n_tokens": 4}
    encoder_run_with_head(tmp_path / "enc", kwargs, seed=2)
    config = EcgLMConfig(llm="tiny", encoder_kwargs=kwargs, encoder_init=str(tmp_path / "enc"), label_tokens=2,
                         encoder_policy="frozen", statement_note=1,
                         lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    tokenizer = copy.deepcopy(tiny_tokenizer)
    prep = ProcessorConfig(prep=PrepConfig(normalize="center").to_dict())
    model, processor = build_model(config, prep, llm=tiny_llm(len(tokenizer)), tokenizer=tokenizer)
    return model, processor  # in training mode, as a stage's model is when it reads its records' statements


def test_the_model_s_own_classifier_writes_the_note_from_the_ecgs_it_is_given(tmp_path, tiny_tokenizer):
    """The reader is the label tokens' frozen head on the pooled encoder tokens: exactly what the model's label tokens
    read in its forward pass; other ECGs bring another note (the random-ECG probe still measures reliance on the
    signal)."""
    model, processor = _model_with_statement_notes(tmp_path, tiny_tokenizer)
    assert processor.config.statement_note == 1 and isinstance(processor.statement_reader, StatementReader)
    ecg, flat = read_ecg(PTBXL_1), read_ecg(PTBXL_1)
    flat.signal[:] = 0.0
    seen = []
    hook = model.label_tokens.register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    model.eval()
    with torch.no_grad():
        model(**processor([NEW], [[ecg, flat]]))
    hook.remove()
    inside = torch.sigmoid(model.label_tokens.head(seen[0])).numpy()
    assert np.allclose(processor.statement_reader.probabilities([ecg, flat]), inside, atol=1e-6)

    def reads(bias: list[float]) -> list[list[str]]:
        with torch.no_grad():  # a head that finds only what its bias says, whatever the ECG
            model.label_tokens.head.weight.zero_()
            model.label_tokens.head.bias.copy_(torch.tensor(bias))
        processor.statement_reader = StatementReader(model, processor)  # a reader belongs to one set of weights
        return processor.statement_reader([ecg])

    assert reads([-20.0, 20.0, -20.0]) == [[]]  # NORM (output 1) is never a statement
    assert reads([20.0, -20.0, -20.0]) == [["atrial fibrillation"]]
    notes = processor.notes(NEW, [ecg, ecg])
    assert notes[1] == statement_comparison_note(["atrial fibrillation"], ["atrial fibrillation"])
    handed = read_ecg(PTBXL_1)
    handed.meta[META_KEY] = []  # what training hands over is used as is, the other ECG is read
    assert processor.notes(NEW, [handed, ecg])[1].startswith("Statements against the first ECG: new: atrial")
    batch = processor([NEW], [[ecg, ecg]])
    assert model(**batch).loss.isfinite()


def test_reading_statements_leaves_a_training_model_s_frozen_encoder_as_it_was(tmp_path, tiny_tokenizer):
    """A stage's model is built in training mode; reading with it there would normalise each batch by its own
    statistics and move the frozen encoder's running statistics. The reader reads in eval mode and restores the mode."""
    model, processor = _model_with_statement_notes(tmp_path, tiny_tokenizer)
    assert model.training
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    ecgs = [read_ecg(PTBXL_1), read_ecg(PTBXL_1)]
    ecgs[1].signal[:] *= 0.5
    training_read = processor.statement_reader.probabilities(ecgs)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    model.eval()
    assert np.allclose(training_read, StatementReader(model, processor).probabilities(ecgs), atol=1e-6)
    with pytest.raises(ValueError, match="encoder_policy: frozen"):
        EcgLMConfig(label_tokens=2, statement_note=1, encoder_policy="trained")


def test_a_stage_reads_each_two_ecg_record_once_and_counts_the_note_in_its_lengths(tmp_path, tiny_tokenizer):
    from types import SimpleNamespace

    import pandas as pd

    from ecgllm.io.record import ECG
    from ecgllm.training.data import ConversationDataset, token_lengths

    model, processor = _model_with_statement_notes(tmp_path, tiny_tokenizer)
    data = tmp_path / "d.jsonl"
    rows = [{"id": "a", "ecgs": [{"dataset": "ptbxl", "record_id": 3, "tag": "first ECG"},
                                 {"dataset": "ptbxl", "record_id": 6, "tag": "second ECG"}], "turns": NEW},
            {"id": "b", "ecgs": [{"dataset": "ptbxl", "record_id": 8, "tag": ""}],
             "turns": [{"role": "user", "content": "Is this a normal ECG?"}, {"role": "assistant", "content": "no"}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked: list[list[int]] = []
    signal = read_ecg(PTBXL_1)

    def ecgs(ids):
        asked.append(list(ids))
        return [ECG(signal.signal.copy(), signal.fs, list(signal.leads), {}) for _ in ids]

    cache = SimpleNamespace(index=pd.DataFrame({"ecg_id": [3, 6, 8]}), path=tmp_path, ecgs=ecgs)
    dataset = ConversationDataset(data, cache)
    dataset.read_statements(processor.statement_reader)
    assert asked == [[3, 6]] and set(dataset.statements) == {3, 6}  # record 8 is never compared
    turns, items, tags, _ = dataset[0]
    assert all(META_KEY in e.meta for e in items) and META_KEY not in dataset[1][1][0].meta
    processor.statement_reader = None  # training reads what the stage handed over, nothing more
    batch = processor([turns], [items], tags=[tags])
    assert token_lengths(dataset, processor)[0] == batch["input_ids"].shape[1]
    assert "Statements against the first ECG" in processor.tokenizer.decode(batch["input_ids"][0])
