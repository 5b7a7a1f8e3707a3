"""Measurement notes: an ECG's measured intervals and axis as text beside its tokens, for questions about them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ecgllm.datasets.ecgqa_attributes import FEATURES
from ecgllm.datasets.ecgqa_templates import load_templates
from ecgllm.models.configuration import EcgLMConfig
from ecgllm.models.measurement_note import (META_KEY, asks_for_measurements, measurement_note, measurements_of,
                                            read_measurement_rows)
from ecgllm.models.processor import IGNORE_INDEX, EcgProcessor, ProcessorConfig
from tests.conftest import PTBXL_1
from tests.test_loss_targets import check_targets

ROOT = Path(__file__).resolve().parents[1]
ROW = {"rr_s": 0.944, "p_s": 0.093, "pr_s": 0.064, "qrs_s": 0.113, "qt_s": 0.393, "qtc_s": float("nan"),
       "axis_ecgqa_deg": -45.2}


def test_every_numeric_and_axis_wording_asks_for_measurements_and_no_other_does():
    numeric = {"numeric_feature", "heart_axis"}
    for t in load_templates().values():
        for wording in (t.pattern, *t.paraphrases):
            assert asks_for_measurements(wording) == (t.attribute_type in numeric), (t.template_id, wording)
    assert asks_for_measurements("What is the heart rate?") and not asks_for_measurements("Is this ECG normal?")


def test_the_note_names_the_features_of_each_ecgqa_range_and_the_axis_class():
    note = measurement_note(ROW, version=2)
    # ECG-QA's ranges: pr 120-200 ms, qrs 60-110 ms; qtc NaN is said to be missing, not guessed
    assert note == ("Below the normal range: pr interval. Within the normal range: rr interval, p duration, "
                    "qt interval. Above the normal range: qrs duration. Not measured: qt corrected. "
                    "Heart axis: left axis deviation.")
    normal = {**ROW, "pr_s": 0.15, "qrs_s": 0.09, "qtc_s": 0.41, "axis_ecgqa_deg": 10.0}
    assert measurement_note(normal, version=2) == (
        "Below the normal range: none. Within the normal range: rr interval, p duration, pr interval, qrs duration, "
        "qt interval, qt corrected. Above the normal range: none. Heart axis: normal heart axis.")
    assert measurement_note({}, version=2).endswith(
        "Within the normal range: none. Above the normal range: none. Not measured: rr interval, p duration, "
        "pr interval, qrs duration, qt interval, qt corrected. Heart axis: not measured.")


def test_every_feature_is_in_exactly_one_list_of_a_version_2_note_and_version_1_leaves_within_out():
    """ECG-QA asks which features fall within the normal range as often as below or above it: a version-2 note
    answers each of the three by one list (version 1 left "within" to a complement no model learned to take)."""
    for row in (ROW, {**ROW, "rr_s": 0.4, "p_s": 0.2, "qtc_s": 0.6}, {}):
        note = measurement_note(row, version=2)
        lists = [part.split(": ", 1)[1].split(", ") for part in note.rstrip(".").split(". ")[:-1]]
        named = [feature for names in lists for feature in names if feature != "none"]
        assert sorted(named) == sorted(FEATURES), note
    assert measurement_note(ROW, version=1) == ("Below the normal range: pr interval. Above the normal range: qrs "
                                                "duration. Not measured: qt corrected. Heart axis: left axis "
                                                "deviation.")
    with pytest.raises(ValueError, match="note version 4"):
        measurement_note(ROW, version=4)
    with pytest.raises(ValueError, match="measurement_note must be 0"):
        EcgLMConfig(label_tokens=6, named_label_tokens=2, measurement_note=4)


def test_a_version_3_comparison_names_what_became_normal_abnormal_or_stayed_abnormal(tiny_tokenizer):
    """The second of two ECGs gets the serial comparison that ECG-QA's numeric comparison questions (templates 68,
    69, 70) ask about; each feature measured in both ECGs is named by its ranges there, a feature missing in either
    is not named."""
    from ecgllm import read_ecg
    from ecgllm.models.measurement_note import comparison_note

    later = {**ROW, "pr_s": 0.15, "qrs_s": 0.12, "rr_s": 0.5, "qtc_s": 0.41}  # pr normal now, rr short now
    assert comparison_note(ROW, later) == ("Against the first ECG: become normal: pr interval. Become abnormal: rr "
                                           "interval. Still abnormal: qrs duration.")
    assert comparison_note(ROW, ROW) == ("Against the first ECG: become normal: none. Become abnormal: none. Still "
                                         "abnormal: pr interval, qrs duration.")
    assert comparison_note({}, ROW).endswith("become normal: none. Become abnormal: none. Still abnormal: none.")
    first, second = read_ecg(PTBXL_1), read_ecg(PTBXL_1)
    first.meta[META_KEY], second.meta[META_KEY] = ROW, later
    question = [{"role": "user", "content": "What numeric features of the second ECG are still abnormal as compared "
                                            "to the first ECG?"}, {"role": "assistant", "content": "qrs duration"}]
    v3 = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, measurement_note=3))
    notes = v3.notes(question, [first, second])
    assert notes == [measurement_note(ROW, 3), measurement_note(later, 3) + " " + comparison_note(ROW, later)]
    assert measurement_note(ROW, 3) == measurement_note(ROW, 2)  # one ECG's note is version 2's
    assert v3.notes(question, [second, first])[1].endswith(comparison_note(later, ROW))  # the order counts
    assert v3.notes(question[:1], [first]) == [measurement_note(ROW, 3)]  # one ECG: nothing to compare
    v2 = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, measurement_note=2))
    assert v2.notes(question, [first, second]) == [measurement_note(ROW, 2), measurement_note(later, 2)]
    check_targets(v3, question, ["ECG 1", "ECG 2"], notes)  # the comparison is prompt, never labelled


def test_a_checkpoint_or_recipe_that_says_true_reads_version_1_and_a_saved_version_survives(tiny_tokenizer, tmp_path):
    from ecgllm.training.config import load_recipe

    for saved, version in ((True, 1), (2, 2), (False, 0)):
        EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, measurement_note=saved)).save_pretrained(tmp_path)
        assert EcgProcessor.from_pretrained(tmp_path).note_version == version
    saved_config = json.loads((tmp_path / "processor_config.json").read_text())
    (tmp_path / "processor_config.json").write_text(json.dumps({**saved_config, "measurement_note": 7}))
    with pytest.raises(ValueError, match="measurement_note 7"):
        EcgProcessor.from_pretrained(tmp_path)
    recipe = (ROOT / "recipes" / "ecgqa" / "continue_measurement_notes_within.yaml").read_text()
    for written, version in (("true", 1), ("2", 2)):
        path = tmp_path / f"recipe_{written}.yaml"
        path.write_text(recipe.replace("measurement_note: 2", f"measurement_note: {written}"))
        assert load_recipe(path).model.measurement_note == version


def test_a_known_row_is_used_as_is_and_a_signal_is_measured_once(monkeypatch):
    from ecgllm import read_ecg
    from ecgllm.datasets.ecgqa_numeric import ecgqa_measure

    ecg = read_ecg(PTBXL_1)
    assert measurements_of(ecg.signal, ecg.fs, ecg.leads, {META_KEY: ROW}) == ROW
    measured = measurements_of(ecg.signal, ecg.fs, ecg.leads)
    expected = ecgqa_measure(ecg.signal.astype(np.float32), ecg.fs, ecg.leads)
    assert all((math.isnan(measured[k]) and math.isnan(v)) or measured[k] == v for k, v in expected.items())
    import ecgllm.datasets.ecgqa_numeric as numeric

    calls = []
    monkeypatch.setattr(numeric, "ecgqa_measure", lambda *a, **k: calls.append(1) or {})
    assert measurements_of(ecg.signal, ecg.fs, ecg.leads) == measured and not calls  # kept: not measured again
    assert measurements_of(ecg.signal[:, :300] + 1, ecg.fs, ecg.leads) == {} and calls == [1]  # a new one is measured
    monkeypatch.undo()
    assert measurements_of(ecg.signal[:2], ecg.fs, ecg.leads[:2]) == {}  # no lead II / aVF: nothing measured
    assert measurements_of(ecg.signal[:, :5], ecg.fs, ecg.leads) == {}  # too short for NeuroKit2: nothing, no error
    copy = measurements_of(ecg.signal, ecg.fs, ecg.leads)
    copy["rr_s"] = -1.0  # a caller's change never reaches the kept row
    assert measurements_of(ecg.signal, ecg.fs, ecg.leads) == measured


def test_a_measurement_that_fails_otherwise_reads_not_measured_and_is_said(monkeypatch, capsys):
    import ecgllm.datasets.ecgqa_numeric as numeric
    from ecgllm import read_ecg

    def broken(*args, **kwargs):
        raise TypeError("odd signal")

    monkeypatch.setattr(numeric, "ecgqa_measure", broken)
    ecg = read_ecg(PTBXL_1)
    assert measurements_of(ecg.signal * 0.5, ecg.fs, ecg.leads) == {}
    assert "TypeError: odd signal" in capsys.readouterr().err


def test_measurement_table_is_read_and_another_table_refused(tmp_path):
    good = tmp_path / "features.csv"
    good.write_text("ecg_id,rr_s,p_s,pr_s,qrs_s,qt_s,qtc_s,axis_ecgqa_deg,error\n7,0.9,0.1,0.15,0.09,0.4,0.41,30,\n")
    assert read_measurement_rows(good)[7]["rr_s"] == 0.9
    bad = tmp_path / "other.csv"
    bad.write_text("ecg_id,heart_rate\n7,60\n")
    with pytest.raises(ValueError, match="ecgqa-features"):
        read_measurement_rows(bad)


def test_the_processor_adds_notes_only_when_asked_and_never_labels_them(tiny_tokenizer):
    from ecgllm import read_ecg

    ecg = read_ecg(PTBXL_1)
    other = read_ecg(PTBXL_1)
    other.meta[META_KEY] = ROW  # "another patient's ECG": it brings its own note
    processor = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, measurement_note=True))  # version 1
    numeric = [{"role": "user", "content": "What range does the pr interval of this ECG fall in?"},
               {"role": "assistant", "content": "below the normal range"}]
    label = [{"role": "user", "content": "Does this ECG show atrial fibrillation?"},
             {"role": "assistant", "content": "no"}]
    notes = processor.notes(numeric, [other])
    assert notes == [measurement_note(ROW, version=1)]
    assert EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2, measurement_note=2)).notes(numeric, [other]) \
        == [measurement_note(ROW, version=2)]
    assert processor.notes(label, [ecg]) is None
    assert processor.notes(numeric, [ecg]) != notes
    prompt = processor.render(numeric[:1], [""], add_generation_prompt=True, notes=notes)
    assert "<ecg><ecg> Below the normal range: pr interval." in prompt
    assert prompt.index("Below the normal") < prompt.index("What range")
    check_targets(processor, numeric, [""], notes)  # the answer alone is labelled, the note is prompt
    two = [{"role": "user", "content": "Compared to the first ECG, has the qt interval of the second ECG become "
                                       "normal?"}, {"role": "assistant", "content": "no"}]
    notes2 = processor.notes(two, [ecg, other])
    assert len(notes2) == 2 and notes2[0] != notes2[1]
    check_targets(processor, two, ["ECG 1", "ECG 2"], notes2)
    batch = processor([numeric, label], [[other], [ecg]])
    learned = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
    assert processor.tokenizer.decode(learned, clean_up_tokenization_spaces=False) == \
        "below the normal range<|im_end|>"
    assert "Below the normal range" in processor.tokenizer.decode(batch["input_ids"][0])
    assert "Below the normal range" not in processor.tokenizer.decode(batch["input_ids"][1])
    plain = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2))  # checkpoints without notes: unchanged
    assert plain.notes(numeric, [other]) is None
    assert processor.notes(numeric, []) is None  # the blind probe: no ECG, no note
    # answering sees the note exactly as training did: the generation prompt is the training text up to the answer
    prompt = processor([numeric[:1]], [[other]], train=False)["input_ids"][0].tolist()
    ids, _ = processor.encode_for_training(numeric, [""], notes)
    assert ids[:len(prompt)] == prompt and "Below the normal range" in processor.tokenizer.decode(prompt)


def test_training_items_carry_their_records_measurements(tmp_path):
    """The trainer hands each ECG its record's row of the table (those ECGs are not measured during training)."""
    import json
    from types import SimpleNamespace

    import pandas as pd

    from ecgllm.io.record import ECG
    from ecgllm.training.data import ConversationDataset

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "ecgs": [{"dataset": "ptbxl", "record_id": 3, "tag": "ECG 1"},
                                                    {"dataset": "ptbxl", "record_id": 6, "tag": "ECG 2"}],
                                "turns": [{"role": "user", "content": "Is this a normal ECG?"},
                                          {"role": "assistant", "content": "no"}]}) + "\n")
    table = tmp_path / "features.csv"
    table.write_text("ecg_id,rr_s,p_s,pr_s,qrs_s,qt_s,qtc_s,axis_ecgqa_deg\n3,0.9,0.1,0.15,0.09,0.4,0.41,30\n")
    cache = SimpleNamespace(index=pd.DataFrame({"ecg_id": [3, 6]}), path=tmp_path,
                            ecgs=lambda ids: [ECG(np.zeros((12, 100)), 100.0, ["I"] * 12, {}) for _ in ids])
    _, ecgs, _, _ = ConversationDataset(data, cache, measurements=table)[0]
    assert ecgs[0].meta[META_KEY]["rr_s"] == 0.9 and META_KEY not in ecgs[1].meta  # 6 is not in the table
    assert META_KEY not in ConversationDataset(data, cache)[0][1][0].meta


def test_a_measurement_table_without_notes_is_refused_and_notes_without_one_are_announced(tmp_path, capsys):
    from types import SimpleNamespace

    from ecgllm.training.config import RecipeError
    from ecgllm.training.llm_stage import _check_measurement_table

    rows = [{"ecgs": [{"record_id": 3}], "turns": [{"role": "user", "content": "What is the qt interval?"}]},
            {"ecgs": [{"record_id": 6}], "turns": [{"role": "user", "content": "Is this a normal ECG?"}]}]

    def config(table, notes):
        return SimpleNamespace(data=SimpleNamespace(measurements=table), model=SimpleNamespace(measurement_note=notes))

    with pytest.raises(RecipeError, match="model.measurement_note is not"):
        _check_measurement_table(config("t.csv", False), SimpleNamespace(rows=rows, measurements={3: ROW}))
    _check_measurement_table(config("t.csv", True), SimpleNamespace(rows=rows, measurements={3: ROW}))
    assert capsys.readouterr().err == ""  # 6 lacks a row but asks nothing about measurements
    _check_measurement_table(config("t.csv", True), SimpleNamespace(rows=rows, measurements={6: ROW}))
    assert "1 records not in t.csv" in capsys.readouterr().err
    _check_measurement_table(config(None, True), SimpleNamespace(rows=rows, measurements={}))
    assert "no data.measurements table" in capsys.readouterr().err
