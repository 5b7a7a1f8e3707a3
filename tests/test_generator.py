"""ECG-QA-style generator, instruction builder and the split rules that keep test ECGs unseen."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from ecgllm.datasets import ECGQA, PTBXL
from ecgllm.datasets.conversation import from_ecgqa, read_jsonl, write_jsonl
from ecgllm.datasets.ecgqa import ATTRIBUTE_TYPES, QUESTION_TYPES, QASample
from ecgllm.datasets.ecgqa_attributes import build_attributes, parse_lead_spec
from ecgllm.datasets.ecgqa_check import generator_agreement
from ecgllm.datasets.ecgqa_generator import (ANSWER_QUOTA, GENERATOR_VERSION, NONE, ECGQAGenerator, answer_for,
                                             regenerate_answer)
from ecgllm.datasets.ecgqa_templates import load_templates
from ecgllm.datasets.instruct import InstructBuilder
from ecgllm.io.leads import STANDARD_12
from tests.conftest import FIXTURES, SHARED, needs_shared

OFFICIAL_KEYS = {"template_id", "question_id", "sample_id", "question_type", "attribute_type", "question",
                 "answer", "ecg_id", "attribute"}
GENERATED_KEYS = OFFICIAL_KEYS | {"generator_version", "sampling", "draw"}


@pytest.fixture(scope="module")
def small():
    ptbxl = PTBXL.load(FIXTURES / "ptbxl_labels")
    # Numeric features come from measurements; a table of plausible values stands in for a measured one.
    ids = ptbxl.ecg_ids
    measurements = pd.DataFrame({"rr_ms": [900.0 if i % 3 else 500.0 for i in ids], "p_ms": 100.0,
                                 "pr_ms": [160.0 if i % 4 else 240.0 for i in ids], "qrs_ms": 90.0,
                                 "qt_ms": 400.0, "qtc_bazett_ms": [420.0 if i % 5 else 480.0 for i in ids],
                                 "axis_ecgqa_deg": [float(i * 37 % 360 - 180) for i in ids]},
                                index=pd.Index(ids, name="ecg_id"))
    return ptbxl, build_attributes(ptbxl, measurements)


@pytest.fixture(scope="module")
def full():
    if not SHARED.exists() and not os.environ.get("CI"):  # under CI a missing ../shared fails below
        pytest.skip("../shared/data is not available")
    ptbxl = PTBXL.load(SHARED / "ptbxl")
    return ptbxl, ECGQA(SHARED / "ecgqa/ecgqa"), build_attributes(ptbxl)


def test_templates_complete_and_typed():
    templates = load_templates()
    assert len(templates) == 70 and [t.template_id for t in templates.values() if t.completed] == [10]
    assert {t.question_type for t in templates.values()} == set(QUESTION_TYPES)
    assert {t.attribute_type for t in templates.values()} == set(ATTRIBUTE_TYPES)
    assert all(not t.placeholders or t.values for t in templates.values())
    # official paraphrases (train) for every template the official paraphrased train files hold
    assert {t.template_id for t in templates.values() if t.paraphrases} == set(range(1, 71)) - {10, *range(29, 38)}
    for t in templates.values():  # every paraphrase names the same values as the template wording
        for wording in t.paraphrases:
            assert sorted(re.findall(r"\$\{(\w+)\}", wording)) == sorted(re.findall(r"\$\{(\w+)\}", t.pattern))


def test_hand_checked_answers_for_a_real_record(small):
    """ecg_id 8: IMI (likelihood 35), ABQRS (0), SR (0); official row present."""
    _, attrs = small
    t = load_templates()
    a = attrs[8]
    imi = "myocardial infarction in inferior leads"
    assert answer_for(t[1], [a], [imi]) == ["not sure"]        # a diagnostic code at 15-80
    assert answer_for(t[1], [a], ["abnormal qrs"]) == ["yes"]    # a form code: present at any likelihood
    assert answer_for(t[1], [a], ["left ventricular hypertrophy"]) == ["no"]
    assert answer_for(t[1], [a], ["myocardial infarction"]) == ["yes"]  # superclass
    assert answer_for(t[2], [a]) == ["no"] and answer_for(t[2], [attrs[1]]) == ["yes"]
    assert answer_for(t[10], [a]) == ["sinus rhythm"] and answer_for(t[11], [a]) == ["abnormal qrs"]
    assert answer_for(t[16], [a]) == ["yes"]                      # sinus rhythm is a rhythm-related symptom
    assert answer_for(t[8], [a]) == [imi] and answer_for(t[9], [a]) == ["none"]  # 35 is uncertain
    assert answer_for(t[13], [a]) == ["yes"] and answer_for(t[14], [a]) == ["no"]
    assert answer_for(t[12], [a]) == ["yes"] and answer_for(t[12], [attrs[3]]) == ["no"]  # NORM + SR only
    assert answer_for(t[3], [a], ["hypertrophy", "myocardial infarction"]) == ["myocardial infarction"]
    assert set(answer_for(t[62], [attrs[1], a], [])) == {"abnormal qrs", imi}
    assert answer_for(t[63], [attrs[1], a], []) == ["sinus rhythm"]
    assert answer_for(t[45], [attrs[1], a], ["sinus rhythm"]) == ["yes"]
    assert answer_for(t[43], [attrs[1], a], [imi]) is None        # "resolved" presumes it in the first ECG
    assert answer_for(t[25], [a]) == ["unknown stage of myocardial infarction"]
    assert answer_for(t[26], [a], ["baseline drift"], "aVF") == ["yes"]
    assert answer_for(t[34], [attrs[1]], ["static noise"]) == ["lead I", "lead II", "lead III", "lead aVR",
                                                                "lead aVL", "lead aVF", "lead V1"]
    # LVOLT is among ecg 1's labels but its report names no lead: it is never asked about per lead
    lvolt = "low qrs voltages in the frontal and horizontal leads"
    assert answer_for(t[17], [attrs[1]], [lvolt], "II") is None
    assert answer_for(t[18], [attrs[1]], [], "II") == ["none"]


def test_numeric_comparisons(small):
    _, attrs = small
    t = load_templates()
    a, b = attrs[3], attrs[16]  # 3: rr 500 (below); 16: rr 900 (within), pr 240 (above); lead II clean in both
    assert answer_for(t[41], [a], ["rr interval"]) == ["below the normal range"]
    assert answer_for(t[68], [a, b]) == ["rr interval"]        # became normal
    assert answer_for(t[69], [a, b]) == ["pr interval"]        # became abnormal
    assert answer_for(t[66], [a, b], ["rr interval"]) == ["no"]  # abnormal in the first: still abnormal? no
    assert answer_for(t[67], [a, b], ["rr interval"]) is None   # "still normal" presumes normal in the first
    assert answer_for(t[42], [a], ["below the normal range"]) == ["rr interval"]
    assert answer_for(t[40], [a], ["rr interval", "above the normal range", "within the normal range"]) == ["none"]


def test_metadata_unknown_is_not_asked(small):
    _, attrs = small
    t = load_templates()
    assert attrs[100].noise is None and answer_for(t[27], [attrs[100]], ["static noise"]) is None


def test_generation_is_seeded_and_official_schema(small):
    ptbxl, attrs = small
    gen = ECGQAGenerator(attrs, ptbxl.ecg_ids)
    a, b = gen.generate(300, seed=7), gen.generate(300, seed=7)
    assert a == b and a != gen.generate(300, seed=8)
    assert all(set(s) == GENERATED_KEYS and s["generator_version"] == GENERATOR_VERSION for s in a)
    assert {s["sampling"] for s in a} == {"observational"}
    assert {s["sampling"] for s in gen.generate(20, seed=7, paired=True)} == {"paired"}
    samples = [QASample(**{k: s[k] for k in OFFICIAL_KEYS}) for s in a]
    # every generated answer is reproduced from the labels by the checker's code path
    regenerated = [regenerate_answer(s, attrs) for s in samples]
    assert all(r is not None and set(r) == set(s.answer) for r, s in zip(regenerated, samples))
    assert {s["template_id"] for s in gen.generate(3000, seed=0)} == set(range(1, 71))  # every template
    yes = sum(s["answer"] == ["yes"] for s in a)
    no = sum(s["answer"] == ["no"] for s in a)
    assert 0.2 < yes / (yes + no) < 0.5  # close to the official 1:2


def test_paired_generation_asks_each_question_of_two_ecgs_with_different_answers(small):
    ptbxl, attrs = small
    samples = ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(600, seed=5, paired=True)
    assert len(samples) == 600
    pairs = [samples[k:k + 2] for k in range(0, len(samples), 2)]
    for first, second in pairs:
        assert first["question"] == second["question"] and first["template_id"] == second["template_id"]
        assert first["ecg_id"] != second["ecg_id"] and sorted(first["answer"]) != sorted(second["answer"])
        for s in (first, second):  # each answer is the record's own, as the checker derives it
            sample = QASample(**{k: s[k] for k in OFFICIAL_KEYS})
            assert set(regenerate_answer(sample, attrs)) == set(s["answer"])
    # so for every worded verify question, "yes" and "no" come equally often: the wording predicts nothing
    verify = [s for s in samples if s["answer"] in (["yes"], ["no"])]
    assert verify and sum(s["answer"] == ["yes"] for s in verify) * 2 == len(verify)


def test_answered_comparisons_ask_comparison_queries_of_pairs_whose_answer_names_something(small):
    """ECG-QA's own numeric comparison queries almost never answer "none"; drawn pair first, many of ours did. With
    ``answered_comparisons`` none does (partners included), every answer is still the pair's own, and questions of
    other templates draw as before."""
    ptbxl, attrs = small
    from ecgllm.datasets.ecgqa_generator import ANSWERED_COMPARISONS

    queries = list(ANSWERED_COMPARISONS)
    plain = ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(300, seed=3, template_ids=queries)
    answered = ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(300, seed=3, template_ids=queries,
                                                            answered_comparisons=True)
    assert sum(s["answer"] == ["none"] for s in plain) > 30  # the record-first draw: many "none"
    assert len(answered) > 200 and not any(s["answer"] == ["none"] for s in answered)
    paired = ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(200, seed=3, template_ids=queries, paired=True,
                                                          answered_comparisons=True)
    assert len(paired) > 100 and not any(s["answer"] == ["none"] for s in paired)  # partners name something too
    for s in answered + paired:
        assert set(regenerate_answer(QASample(**{k: s[k] for k in OFFICIAL_KEYS}), attrs)) == set(s["answer"])
    singles = [t for t in ECGQAGenerator(attrs, ptbxl.ecg_ids).templates if t not in queries][:20]
    assert ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(100, seed=4, template_ids=singles) == \
        ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(100, seed=4, template_ids=singles, answered_comparisons=True)


def test_comparison_pairs_follow_patients_and_time(small):
    ptbxl, attrs = small
    gen = ECGQAGenerator(attrs, ptbxl.ecg_ids)
    for s in gen.generate(400, seed=1):
        if s["question_type"].startswith("comparison_consecutive"):
            x, y = (attrs[i] for i in s["ecg_id"])
            assert x.patient_id == y.patient_id and (x.recorded or "", x.ecg_id) < (y.recorded or "", y.ecg_id)
        elif s["question_type"].startswith("comparison_irrelevant"):
            x, y = (attrs[i] for i in s["ecg_id"])
            assert x.patient_id != y.patient_id


def test_conversations_jsonl_and_llava(tmp_path, small):
    ptbxl, attrs = small
    samples = ECGQAGenerator(attrs, ptbxl.ecg_ids).generate(50, seed=0)
    conversations = [from_ecgqa(s, split="train") for s in samples]
    assert write_jsonl(conversations, tmp_path / "c.jsonl") == 50
    back = list(read_jsonl(tmp_path / "c.jsonl"))
    assert back == conversations
    two = next(c for c in conversations if len(c.ecgs) == 2)
    llava = two.to_llava()
    assert llava["conversations"][0]["value"].count("<ecg>") == 2 and llava["conversations"][1]["from"] == "gpt"


def test_instruct_builder_tasks_and_formats(small):
    ptbxl, _ = small
    measurements = pd.DataFrame({"heart_rate": 70.0, "pr_ms": 160.0, "qrs_ms": 90.0, "qt_ms": 400.0,
                                 "qtc_bazett_ms": 420.0, "axis_deg": 30.0},
                                index=pd.Index(ptbxl.ecg_ids, name="ecg_id"))
    builder = InstructBuilder(ptbxl, ptbxl.ecg_ids, measurements)
    cs = builder.build(600, seed=0, split="train")
    kinds = {k for c in cs for k in c.meta["turn_kinds"]}
    assert {t for t, _ in kinds} == {"feature", "rhythm", "morphology", "report"}
    assert {f for _, f in kinds} == {"close", "open", "fill", "mcq"}
    assert any(2 <= len(c.turns) // 2 <= 4 for c in cs if c.meta["task"] == "dialogue")
    mcq = next(c for c in cs if c.meta["format"] == "mcq")
    assert mcq.meta["answers"][0] in "ABCD" and mcq.turns[1].content.startswith(mcq.meta["answers"][0] + ".")
    report = next(c for c in cs if c.meta["task"] == "report" and c.meta.get("original_report"))
    assert "Rhythm:" in report.turns[1].content and "Findings:" in report.turns[1].content
    assert builder.build(100, seed=3) == builder.build(100, seed=3)


def test_generated_training_data_never_uses_ecgqa_test_or_valid_ecgs(small):
    ptbxl, attrs = small
    qa = ECGQA(FIXTURES / "ecgqa")
    train = qa.split_ecg_ids("train")
    held_out = qa.split_ecg_ids("test") | qa.split_ecg_ids("valid")
    assert set(ptbxl.ecg_ids) & held_out  # the fixture does contain held-out ECGs to avoid
    samples = ECGQAGenerator(attrs, train).generate(500, seed=0)
    used = {e for s in samples for e in s["ecg_id"]}
    assert used and used <= train and not used & held_out
    instructions = InstructBuilder(ptbxl, train).build(200, seed=0)
    assert {c.ecgs[0].record_id for c in instructions} <= train


@needs_shared
def test_both_split_systems_are_patient_disjoint(full):
    ptbxl, qa, _ = full
    patient = ptbxl.table["patient_id"]
    ecgqa = {k: set(patient.loc[sorted(qa.split_ecg_ids(k))].dropna()) for k in ("train", "valid", "test")}
    assert not ecgqa["train"] & ecgqa["test"] and not ecgqa["train"] & ecgqa["valid"]
    folds = {k: set(patient.loc[ptbxl.split_ids(k)].dropna()) for k in ("train", "valid", "test")}
    assert not folds["train"] & folds["test"] and not folds["train"] & folds["valid"]
    # the two systems cut across each other: ECG-QA test ECGs sit in PTB-XL training folds
    assert qa.split_ecg_ids("test") & set(ptbxl.split_ids("train"))


@needs_shared
def test_all_question_and_attribute_types_on_real_data(full):
    ptbxl, qa, attrs = full
    samples = ECGQAGenerator(attrs, qa.split_ecg_ids("train")).generate(3000, seed=0)
    assert {s["question_type"] for s in samples} == set(QUESTION_TYPES)
    # the heart axis and numeric features need signal measurements (none are given here)
    assert {s["attribute_type"] for s in samples} == set(ATTRIBUTE_TYPES) - {"numeric_feature", "heart_axis"}
    # every other template is generated, the lead-level ones (17-19) included
    measured = {t.template_id for t in load_templates().values()
                if t.attribute_type in ("numeric_feature", "heart_axis")}
    assert {s["template_id"] for s in samples} == set(range(1, 71)) - measured


def test_answer_groups_draw_choose_and_query_questions_as_ecgqa_did(full, monkeypatch):
    """ECG-QA drew, for each question, up to a fixed number of records of each of its answers; drawing the record
    first makes most choose and query questions answer "none" (a model then learns "none" as the safe answer)."""
    ptbxl, qa, attrs = full
    generator = ECGQAGenerator(attrs, qa.split_ecg_ids("train"))
    templates = [4, 6, 18, 19, 30, 38]  # choose and query, with and without a lead or a named value
    grouped = generator.generate(600, seed=3, template_ids=templates, answer_groups=True)
    record_first = generator.generate(600, seed=3, template_ids=templates)

    def none_share(samples: list[dict]) -> float:
        return sum(s["answer"] == ["none"] for s in samples) / len(samples)

    assert len(grouped) == 600 and {s["draw"] for s in grouped} == {"answer_groups"}
    assert {s["draw"] for s in record_first} == {"record_first"}
    assert none_share(record_first) > 0.6 and none_share(grouped) < 0.35  # official samples: about a third
    for tid in templates:  # every template still answers "none" sometimes: it stays one answer among others
        answers = {tuple(s["answer"]) for s in grouped if s["template_id"] == tid}
        assert len(answers) > 3
    for s in grouped[:200]:  # each answer is the record's own, as the checker derives it
        sample = QASample(**{k: s[k] for k in OFFICIAL_KEYS})
        assert set(regenerate_answer(sample, attrs)) == set(s["answer"])
    # an answer only one record gives is drawn with weight 1 against a common answer's quota: no record dominates
    repeats = Counter(s["ecg_id"][0] for s in grouped if s["template_id"] in (18, 38))
    assert max(repeats.values()) <= 6
    for (tid, values, lead), groups in generator._groups.items():  # every record's group is its answer
        t = load_templates()[tid]
        for answer, ids in list(groups.items())[:5]:
            for i in ids[:20]:
                assert tuple(answer_for(t, [attrs[int(i)]], list(values), lead)) == answer
    paired = generator.generate(400, seed=3, template_ids=templates, answer_groups=True, paired=True)
    for first, second in zip(paired[::2], paired[1::2]):  # a partner answers otherwise, "none" no likelier than else
        assert first["question"] == second["question"] and sorted(first["answer"]) != sorted(second["answer"])
    assert none_share(paired) < 0.35
    assert {s["answer_quota"] for s in grouped} == {5, 10}  # train quotas: choose 5, query 10
    # a valid or test split is drawn with its own quotas (ECG-QA: choose 3, query 6 there)
    valid = ECGQAGenerator(attrs, qa.split_ecg_ids("valid"))
    used: list[int] = []  # the quotas the draw itself weighs answers with, not only the ones recorded
    draw = ECGQAGenerator._record_of_an_answer
    monkeypatch.setattr(ECGQAGenerator, "_record_of_an_answer",
                        staticmethod(lambda groups, rng, quota, other_than=None:
                                     used.append(quota) or draw(groups, rng, quota, other_than)))
    assert {s["answer_quota"] for s in valid.generate(300, seed=3, template_ids=templates, answer_groups=True,
                                                        quota_split="valid")} == {3, 6}
    assert set(used) == {3, 6}
    with pytest.raises(ValueError, match="quota_split"):
        valid.generate(10, answer_groups=True, quota_split="dev")
    verify = generator.generate(200, seed=3, template_ids=[1, 17], answer_groups=True)  # verify keeps its draw
    assert {s["draw"] for s in verify} == {"record_first"}
    with pytest.raises(ValueError, match="answer-group"):
        ECGQAGenerator(attrs, qa.split_ecg_ids("train"), strata={1: "normal"}).generate(
            10, intervention=True, answer_groups=True)


def test_answers_weigh_min_of_their_records_and_the_split_quota():
    """ECG-QA's quotas (choose: 5 records of each answer in train, 3 in valid/test): "none" with 50 records, "a"
    with 4 and "b" with 1 are drawn 3:3:1 under the valid quota and 5:4:1 under the train one."""
    groups = {(NONE,): np.arange(50, dtype=np.int32), ("a",): np.arange(50, 54, dtype=np.int32),
              ("b",): np.array([54], dtype=np.int32)}
    for quota_split, expected_share_a in (("valid", 3 / 7), ("train", 4 / 10)):
        rng = np.random.default_rng(0)
        quota = ANSWER_QUOTA[quota_split]["choose"]
        drawn = [ECGQAGenerator._record_of_an_answer(groups, rng, quota) for _ in range(20000)]
        assert abs(np.mean([50 <= i < 54 for i in drawn]) - expected_share_a) < 0.015
    rng = np.random.default_rng(0)  # a pair's partner never has the first record's answer
    assert all(ECGQAGenerator._record_of_an_answer(groups, rng, 3, other_than=(NONE,)) >= 50 for _ in range(200))


@needs_shared
def test_paraphrased_generation_uses_official_wordings(full):
    _, qa, attrs = full
    generator = ECGQAGenerator(attrs, qa.split_ecg_ids("train"))
    plain = generator.generate(400, seed=3)
    worded = generator.generate(400, seed=3, paraphrase=1.0)
    # the same records, values and answers; only the wording changes
    assert [(s["ecg_id"], s["answer"], s["attribute"]) for s in plain] == \
        [(s["ecg_id"], s["answer"], s["attribute"]) for s in worded]
    templates = load_templates()
    pairs = [(p, w) for p, w in zip(plain, worded) if templates[p["template_id"]].paraphrases]
    assert pairs and sum(p["question"] != w["question"] for p, w in pairs) > 0.6 * len(pairs)
    assert all(p["question"] == w["question"] for p, w in zip(plain, worded)
               if not templates[p["template_id"]].paraphrases)
    with pytest.raises(ValueError, match="paraphrase"):
        generator.generate(5, paraphrase=2.0)
    # data to train on never uses a held-out wording; other data does
    from ecgllm.datasets.ecgqa_templates import never_trained_wording

    train = generator.generate(600, seed=4, paraphrase=1.0, include_held_out_wordings=False)
    other = generator.generate(600, seed=4, paraphrase=1.0, include_held_out_wordings=True)
    assert not any(never_trained_wording(templates[s["template_id"]], s["question"]) for s in train)
    assert sum(never_trained_wording(templates[s["template_id"]], s["question"]) for s in other) > 20


HELD_OUT_DIGEST = "3c0705c387d8"  # sha256 of the 60 held-out wordings, sorted, one a line


def test_one_wording_per_template_is_held_out_and_every_template_keeps_trained_ones():
    from ecgllm.datasets.ecgqa_templates import never_trained_wording, wording_of

    templates = load_templates()
    for t in templates.values():
        others = [w for w in t.paraphrases if w != t.pattern]
        assert len(t.held_out_paraphrases) == (1 if len(others) >= 3 else 0)
        assert set(t.held_out_paraphrases) | set(t.trained_paraphrases) == set(t.paraphrases)
        assert not set(t.held_out_paraphrases) & set(t.trained_paraphrases)
        assert t.pattern not in t.held_out_paraphrases  # some templates' paraphrased samples reuse the pattern
        assert not never_trained_wording(t, t.pattern.replace("${", "<").replace("}", ">"))
    t25 = templates[25]
    question = "What stage of infarction is this ECG at?"
    assert wording_of(t25, question) == t25.pattern and not never_trained_wording(t25, question)
    assert never_trained_wording(t25, "Tell me, in your own words, the infarction stage?")  # no official wording
    for wording in t25.paraphrases:
        assert never_trained_wording(t25, wording) == (wording in t25.held_out_paraphrases)
    # pinned: a rebuilt paraphrase file must not silently move which wordings are held out
    import hashlib

    held = sorted(w for t in templates.values() for w in t.held_out_paraphrases)
    assert len(held) == 60 and hashlib.sha256("\n".join(held).encode()).hexdigest()[:12] == HELD_OUT_DIGEST


def test_converting_official_train_questions_leaves_out_held_out_wordings(tmp_path, capsys):
    from ecgllm.serving.cli import main

    t = load_templates()[2]  # "Is this a normal ECG?": no placeholder, every paraphrase is a question as it stands
    held, kept = t.held_out_paraphrases, t.trained_paraphrases
    assert held and kept
    train = ECGQA(FIXTURES / "ecgqa").split_ecg_ids("train")
    ecg = min(train)
    samples = [{"template_id": 2, "question_id": k, "sample_id": k, "question_type": t.question_type,
                "attribute_type": t.attribute_type, "question": q, "answer": ["yes"], "ecg_id": [ecg],
                "attribute": None} for k, q in enumerate([held[0], kept[0], t.pattern])]
    (tmp_path / "paraphrased").mkdir()
    (tmp_path / "paraphrased" / "train.json").write_text(json.dumps(samples))
    out = tmp_path / "c.jsonl"
    assert main(["data", "convert", str(tmp_path / "paraphrased"), "--split", "train", "-o", str(out)]) == 0
    questions = [c.turns[0].content for c in read_jsonl(out)]
    assert held[0] not in questions and kept[0] in questions and t.pattern in questions
    assert "1 questions in a held-out or unknown paraphrased wording left out" in capsys.readouterr().err


@needs_shared
def test_agreement_with_official_noise_answers(full):
    _, qa, attrs = full
    noise = [s for s in qa.samples("train") + qa.samples("valid") if s.attribute_type == "noise"]
    result = generator_agreement(noise, attrs)
    assert result["noise"]["n"] >= 10000 and result["noise"]["agreement"] == 1.0


@pytest.mark.parametrize("text,leads", [(" , I-AVF,  ", "I II III aVR aVL aVF"), ("v3-4", "V3 V4"),
                                        ("V3,V4-V6", "V3 V4 V5 V6"), (" , alles,  ", " ".join(STANDARD_12)),
                                        ("v1 - v3", "V1 V2 V3"), ("i-v1", "I II III aVR aVL aVF V1")])
def test_noise_lead_parsing(text, leads):
    assert parse_lead_spec(text) == frozenset(leads.split())


@pytest.mark.parametrize("text", [" , mittel,  ", "noisy recording", "ja", "", None])
def test_noise_without_leads_is_absent(text):
    assert parse_lead_spec(text) is None


def test_cli_generate_and_measure(tmp_path, capsys):
    from ecgllm.serving.cli import main

    out = tmp_path / "g.json"
    args = ["data", "generate", "ecgqa", "--ptbxl", str(FIXTURES / "ptbxl_labels"), "--ecgqa", str(FIXTURES / "ecgqa")]
    assert main(args + ["--n", "120", "--out", str(out)]) == 0
    samples = json.loads(out.read_text())
    train = ECGQA(FIXTURES / "ecgqa").split_ecg_ids("train")
    assert len(samples) == 120 and all(set(s) == GENERATED_KEYS for s in samples)
    assert {e for s in samples for e in s["ecg_id"]} <= train
    assert main(args + ["--n", "20", "--format", "llava", "--out", str(tmp_path / "l.json")]) == 0
    assert "<ecg>" in json.loads((tmp_path / "l.json").read_text())[0]["conversations"][0]["value"]
    assert main(args + ["--n", "20", "--paraphrase", "1", "--format", "jsonl", "--out", str(tmp_path / "p.jsonl")]) == 0
    assert all(c.meta["generator_version"] == GENERATOR_VERSION and c.meta["sampling"] == "observational"
               for c in read_jsonl(tmp_path / "p.jsonl"))
    assert main(["data", "generate", "instruct", "--ptbxl", str(FIXTURES / "ptbxl_labels"), "--pool", "ptbxl",
                 "--split", "valid", "--n", "10", "--out", str(tmp_path / "i.jsonl")]) == 0
    assert len(list(read_jsonl(tmp_path / "i.jsonl"))) == 10
    assert main(["data", "generate", "ecgqa", "--ptbxl", str(FIXTURES / "ptbxl_labels"), "--n", "5",
                 "--out", str(out)]) == 2
    assert "--ecgqa" in capsys.readouterr().err
    for draw in ("--paired", "--answer-groups"):  # each picks records for their answers: no do(Q) sampling then
        assert main(args + ["--n", "4", "--intervention", draw, "--out", str(tmp_path / "x.json")]) == 2
        assert "cannot be combined" in capsys.readouterr().err
    assert main(args + ["--n", "40", "--answer-groups", "--template-ids", "4", "6", "--out", str(out)]) == 0
    assert {s["draw"] for s in json.loads(out.read_text())} == {"answer_groups"}
    assert main(["data", "measure", "ptbxl", "--source", str(FIXTURES / "ptbxl"), "--out",
                 str(tmp_path / "m.csv"), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "m.csv", index_col="ecg_id")
    assert list(table.index) == [1, 2] and 55 < table.at[1, "heart_rate"] < 75


def test_cli_measures_ecgqa_features_resumably_and_they_feed_numeric_questions(tmp_path):
    from ecgllm.serving.cli import main

    out = tmp_path / "features.csv"
    args = ["data", "measure", "ptbxl", "--source", str(FIXTURES / "ptbxl"), "--ecgqa", str(FIXTURES / "ecgqa/ptbxl"),
            "--ecgqa-features", "--workers", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    table = pd.read_csv(out, index_col="ecg_id")
    # record 2 is a sinus bradycardia (PTB-XL SBRAD): a long RR; record 1 about 63/min
    assert list(table.index) == [1, 2] and 0.85 < table.at[1, "rr_s"] < 1.1 and table.at[2, "rr_s"] > 1.0
    assert 0.04 < table.at[1, "qrs_s"] < 0.2 and -90 < table.at[1, "axis_ecgqa_deg"] < 180
    before = out.read_text()

    def measured_twice(job):
        raise AssertionError(f"record {job[0]} measured again")

    import ecgllm.datasets.measurements as measurements

    original, measurements._measure_ecgqa = measurements._measure_ecgqa, measured_twice
    try:  # a re-run resumes: nothing is measured twice (one worker: measured in this process)
        assert main(args) == 0 and out.read_text() == before
    finally:
        measurements._measure_ecgqa = original
    # --ecgqa: only the records ECG-QA asks about
    import shutil

    qa = tmp_path / "qa"
    shutil.copytree(FIXTURES / "ecgqa/ptbxl", qa)
    for split in ("train", "valid", "test"):
        lines = (qa / f"{split}_ecgs.tsv").read_text().splitlines()
        (qa / f"{split}_ecgs.tsv").write_text("\n".join(x for x in lines if x.split("\t")[-1] != "2") + "\n")
    only = tmp_path / "only.csv"
    assert main([*args[:5], "--ecgqa", str(qa), "--ecgqa-features", "--workers", "1", "--out", str(only),
                 "--quiet"]) == 0
    assert list(pd.read_csv(only, index_col="ecg_id").index) == [1]
    # a CSV of another kind is not taken for a resume file
    plain = tmp_path / "plain.csv"
    plain.write_text("ecg_id,heart_rate\n1,60\n")
    assert main([*args[:7], "--ecgqa-features", "--out", str(plain), "--quiet"]) == 3
    # ECG-QA's range answers follow from the measured features (templates 41: "What range does ... fall in?")
    attributes = build_attributes(PTBXL.load(FIXTURES / "ptbxl_labels"), pd.read_csv(out, index_col="ecg_id"))
    t41 = load_templates()[41]
    rr_answer = answer_for(t41, [attributes[2]], ["rr interval"])
    assert rr_answer == ["above the normal range"]


@pytest.mark.parametrize("command", [["data", "measure"], ["data", "generate"], ["eval", "ecgbench"]])
def test_help_examples_keep_their_continued_lines(command, capsys):
    from ecgllm.serving.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    examples = re.split(r"examples?:", capsys.readouterr().out)[1]
    continued = [line for line in examples.splitlines() if line.rstrip().endswith("\\")]
    assert continued and all(line.startswith("  ecgllm ") for line in continued)


def test_ecgqa_mimic_variant_maps_study_ids(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "ecgqa/ptbxl", tmp_path / "mimic-iv-ecg")
    qa = ECGQA(tmp_path / "mimic-iv-ecg")
    assert qa.source == "mimic-iv-ecg"
    sample = qa.samples("train")[0]
    sample.ecg_id = [40000001]
    assert qa.ecg_paths(sample, FIXTURES / "mimic")[0].name == "40000001"
