"""Evaluation harness: answer parsing (property tests), the ECG-QA scorer on hand-checked files and on the
official chunks, probes and the `ecgllm eval` commands on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecgllm.datasets.ecgqa_templates import load_templates
from ecgllm.evaluation.answers import key, parse_answer, parse_choice
from ecgllm.evaluation.ecgqa_score import load_gold, score_file, score_predictions
from tests.conftest import FIXTURES, SHARED, needs_shared

TEMPLATES = load_templates()
LIST_TEMPLATES = [t for t in TEMPLATES.values() if len(t.answer_classes) > 3]
QA_FIXTURE = FIXTURES / "ecgqa/ptbxl"


# ----------------------------------------------------------------------------------------- parsing
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_subset_in_any_order_case_and_separator_parses_back(data):
    template = data.draw(st.sampled_from(LIST_TEMPLATES))
    chosen = data.draw(st.lists(st.sampled_from(template.answer_classes), min_size=1, max_size=4, unique=True))
    chosen = data.draw(st.permutations(chosen))
    seps = data.draw(st.lists(st.sampled_from([", ", ",", "; ", " and ", " & ", "\n", " ,  "]),
                              min_size=len(chosen), max_size=len(chosen)))
    case = data.draw(st.sampled_from([str.lower, str.upper, str.title, lambda s: s]))
    text = "".join(case(c) + s for c, s in zip(chosen, seps))[: -len(seps[-1])] + data.draw(st.sampled_from(["", ".", " "]))
    parsed = parse_answer(text, template.answer_classes)
    assert parsed.answers == frozenset(chosen), text


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60), tid=st.sampled_from(sorted(TEMPLATES)))
def test_parsing_never_crashes_and_never_invents_an_option(text, tid):
    options = TEMPLATES[tid].answer_classes
    parsed = parse_answer(text, options)
    assert parsed.answers is None or parsed.answers <= set(options)


@settings(max_examples=200, deadline=None)
@given(word=st.sampled_from(["yes", "no", "not sure"]), case=st.sampled_from([str.lower, str.upper, str.capitalize]),
       tail=st.sampled_from(["", ".", "!", ", it does.", " - clearly", ", there is evidence."]))
def test_yes_no_not_sure_with_any_case_and_trailing_words(word, case, tail):
    assert parse_answer(case(word) + tail, ("no", "not sure", "yes")).answers == {word}


@pytest.mark.parametrize("text,expected", [
    ("AF", {"atrial fibrillation"}), ("afib", {"atrial fibrillation"}), ("Atrial Fibrillation.", {"atrial fibrillation"}),
    ("LBBB", {"complete left bundle branch block"}), ("1st degree AV block", {"first degree av block"}),
    ("leads V1, V2 and aVR", {"lead V1", "lead V2", "lead aVR"}), ("v5", {"lead V5"}),
    ("The answer is: NSR", {"sinus rhythm"}), ("none", {"none"}),
])
def test_synonyms_abbreviations_and_lead_names(text, expected):
    options = tuple(sorted({c for t in TEMPLATES.values() for c in t.answer_classes}))
    assert parse_answer(text, options).answers == expected


def test_unparseable_answers_are_none_not_a_random_option():
    options = TEMPLATES[2].answer_classes  # no / yes
    for text in ("maybe", "", "the ECG looks interesting", "yesno"):
        assert parse_answer(text, options).answers is None
    assert parse_answer(["AF", 3], ("atrial fibrillation",)).answers is None


@pytest.mark.parametrize("text,index", [("B", 1), ("(c)", 2), ("Answer: A", 0), ("b) sinus bradycardia", 1),
                                        ("Sinus tachycardia", 2), ("I think it is sinus bradycardia.", 1),
                                        ("E", None), ("sinus", None), ("", None)])
def test_multiple_choice_letters_and_option_texts(text, index):
    assert parse_choice(text, ["sinus rhythm", "sinus bradycardia", "sinus tachycardia"]) == index


# ----------------------------------------------------------------------------------------- scorer
def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scorer_on_a_hand_checked_file(tmp_path):
    gold = json.loads((QA_FIXTURE / "template/valid/60000.json").read_text())[:6]
    (tmp_path / "gold.json").write_text(json.dumps(gold))
    rows = [{"sample_id": gold[0]["sample_id"], "answer": list(reversed(gold[0]["answer"]))},  # right, other order
            {"sample_id": gold[1]["sample_id"], "answer": ", ".join(gold[1]["answer"]).upper()},  # right, upper case
            {"sample_id": gold[2]["sample_id"], "answer": "definitely something"},                # unparseable
            {"sample_id": gold[3]["sample_id"], "answer": gold[3]["answer"][:-1] or ["none"]},    # wrong set
            {"sample_id": 999999, "answer": "yes"}]                                               # unknown id
    # gold[4], gold[5]: missing
    metrics, table = score_file(_write(tmp_path / "p.jsonl", rows), tmp_path / "gold.json", n_boot=200)
    assert metrics["overall_em"] == pytest.approx(2 / 6, abs=1e-4)
    assert (metrics["missing"], metrics["unparseable"], metrics["unknown_predictions"]) == (2, 1, 0 + 1)
    assert table["correct"].sum() == 2
    qtypes = {s["question_type"] for s in gold}
    assert set(metrics["per_question_type"]) == qtypes
    lo, hi = metrics["overall_em_ci95"]
    assert lo <= metrics["overall_em"] <= hi


def test_template_and_paraphrased_need_the_variant_and_give_the_gap(tmp_path):
    gold = load_gold([QA_FIXTURE / "template/valid", QA_FIXTURE / "paraphrased/valid"])
    assert gold.variants == ["paraphrased", "template"]
    template = json.loads((QA_FIXTURE / "template/valid/60000.json").read_text())
    rows = [{"sample_id": s["sample_id"], "answer": s["answer"], "variant": "template"} for s in template]
    rows += [{"sample_id": s["sample_id"], "answer": "no idea", "variant": "paraphrased"} for s in template]
    table, _ = score_predictions(gold, rows)
    from ecgllm.evaluation.ecgqa_score import summarize

    metrics = summarize(table, n_boot=100)
    assert metrics["per_variant"] == {"paraphrased": 0.0, "template": 1.0}
    assert metrics["paraphrase_gap"] == 1.0
    from ecgllm.datasets.ecgqa import ECGQAFormatError

    with pytest.raises(ECGQAFormatError, match="variant"):
        score_predictions(gold, [{"sample_id": template[0]["sample_id"], "answer": "yes"}])


@needs_shared
@pytest.mark.parametrize("chunk", ["template/train/120000.json.gz", "paraphrased/train/260000.json.gz",
                                   "template/valid/60000.json.gz"])
def test_official_answers_score_one_on_every_official_chunk(tmp_path, chunk):
    import gzip

    path = SHARED / "ecgqa/ecgqa/ptbxl" / chunk
    gold = json.load(gzip.open(path, "rt"))
    rows = [{"sample_id": s["sample_id"], "answer": " and ".join(s["answer"][::-1])} for s in gold]
    metrics, _ = score_file(_write(tmp_path / "p.jsonl", rows), path, n_boot=50)
    assert metrics["overall_em"] == 1.0 and metrics["unparseable"] == 0
    # and answering "no" to everything gives exactly the share of samples whose gold is ["no"]
    rows = [{"sample_id": s["sample_id"], "answer": "No."} for s in gold]
    metrics, _ = score_file(_write(tmp_path / "p.jsonl", rows), path, n_boot=50)
    assert metrics["overall_em"] == pytest.approx(sum(s["answer"] == ["no"] for s in gold) / len(gold), abs=1e-4)


def test_score_command_writes_metrics_report_and_plots(tmp_path):
    gold = QA_FIXTURE / "template/valid/60000.json"
    rows = [{"sample_id": s["sample_id"], "answer": s["answer"] if i % 2 else "yes"}
            for i, s in enumerate(json.loads(gold.read_text()))]
    preds = _write(tmp_path / "p.jsonl", rows)
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "eval", "ecgqa-score", str(preds), "--gold",
                             str(gold), "--out", str(tmp_path / "run"), "--ptbxl-labels", str(FIXTURES / "ptbxl_labels")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert 0 <= metrics["overall_em"] <= 1 and metrics["per_question_type"]
    assert metrics["run"]["data_version"] and "ecgqa-score" in metrics["run"]["command"]
    assert (tmp_path / "run/report.md").read_text().startswith("# ECG-QA scores")
    assert (tmp_path / "run/per_question_type.png").stat().st_size > 1000
    bad = _write(tmp_path / "bad.jsonl", [{"answer": "yes"}])
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "eval", "ecgqa-score", str(bad), "--gold",
                             str(gold), "--out", str(tmp_path / "run2")], capture_output=True, text=True)
    assert result.returncode == 3 and "bad.jsonl:1" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------- model runs
@pytest.fixture()
def two_record_gold(tmp_path):
    """Questions about the two PTB-XL records shipped as fixtures (ecg_id 1 and 2), in the official format."""
    samples = [{"sample_id": i, "template_id": 2 if i % 2 else 1, "question_id": 0, "question_type": "single-verify",
                "attribute_type": "scp_code", "question": "Does this ECG show sinus rhythm?",
                "answer": ["yes"], "ecg_id": [1 + i % 2], "attribute": ["sinus rhythm"]} for i in range(6)]
    samples.append({"sample_id": 6, "template_id": 32, "question_id": 0,
                    "question_type": "comparison_consecutive-verify", "attribute_type": "scp_code",
                    "question": "Does the second ECG show sinus rhythm as compared to the first ECG?",
                    "answer": ["no"], "ecg_id": [1, 2], "attribute": ["sinus rhythm"]})
    path = tmp_path / "template" / "valid" / "gold.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(samples))
    return path


def test_eval_ecgqa_with_probes_resumes_and_scores(tmp_path, tiny_checkpoint, two_record_gold):
    cli = [sys.executable, "-m", "ecgllm.serving.cli", "eval", "ecgqa", "--data", str(two_record_gold), "--ptbxl",
           str(FIXTURES / "ptbxl"), "--model", str(tiny_checkpoint), "--batch-size", "4", "--quiet"]
    result = subprocess.run(cli + ["--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    preds = [json.loads(line) for line in (tmp_path / "run/predictions.jsonl").read_text().splitlines()]
    assert sorted(p["sample_id"] for p in preds) == list(range(7))
    assert all(0.0 <= p["p_yes"] <= 1.0 for p in preds)
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["n"] == 7 and set(metrics["per_stratum"]) <= {"normal", "one abnormal", "several abnormal",
                                                                "no diagnostic label"}
    # a re-run finds every answer done and appends nothing
    again = subprocess.run(cli + ["--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert again.returncode == 0
    assert len((tmp_path / "run/predictions.jsonl").read_text().splitlines()) == 7
    # random-ECG swaps records 1 and 2; blind uses none
    result = subprocess.run(cli + ["--out", str(tmp_path / "rnd"), "--probe", "random-ecg"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    used = {json.loads(line)["sample_id"]: json.loads(line)["ecg_ids"]
            for line in (tmp_path / "rnd/predictions.jsonl").read_text().splitlines()}
    assert used[0] == [2] and used[1] == [1] and used[6] == [2, 1]


def test_probes_report_and_missing_default_model(tmp_path, tiny_checkpoint, two_record_gold):
    from ecgllm.evaluation.probes import run_probes

    summary = run_probes([str(two_record_gold)], str(FIXTURES / "ptbxl"), str(tmp_path / "probes"),
                         model=str(tiny_checkpoint), progress=False)
    assert {"with_ecg_em", "blind_em", "random_ecg_em", "random_ecg_fall_towards_blind"} <= set(summary)
    for probe in ("none", "blind", "random-ecg"):
        assert (tmp_path / "probes" / probe / "metrics.json").exists()
    assert "Random-ECG falls" in (tmp_path / "probes/report.md").read_text()
    env = {**__import__("os").environ, "ECGLLM_MODEL": str(tmp_path / "nowhere")}
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "eval", "ecgqa", "--data", str(two_record_gold),
                             "--ptbxl", str(FIXTURES / "ptbxl"), "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 3 and "--model" in result.stderr


def test_random_ecg_mapping_is_a_derangement_across_patients():
    from ecgllm.evaluation.runner import random_ecg_mapping

    ids = list(range(1, 41))
    patient = {i: i // 2 for i in ids}  # pairs of records share a patient
    mapping = random_ecg_mapping(ids, seed=3, patient_of=patient)
    assert sorted(mapping.values()) == ids
    assert all(patient[a] != patient[b] for a, b in mapping.items())


def test_random_ecg_ceiling_counts_the_swaps_whose_answer_changes(tmp_path):
    """A perfect reader's fall on the probe's swaps: a normal ECG swapped for an infarction changes the answer to
    "Is this a normal ECG?", a normal one for another normal one does not, and a gold answer our rules do not
    reproduce is set apart instead of counted. A comparison swaps both of its ECGs: an infarction newly detected
    in the recent tracing is no longer there when both become normal ECGs, and stays when the recent one stays."""
    from ecgllm.datasets import PTBXL
    from ecgllm.datasets.ecgqa_attributes import build_attributes
    from ecgllm.evaluation.probes import random_ecg_ceiling

    attributes = build_attributes(PTBXL.load(FIXTURES / "ptbxl_labels"))
    assert attributes[1].normal and attributes[2].normal and attributes[3].normal and not attributes[8].normal
    base = {"question_id": 0, "template_id": 2, "question_type": "single-verify", "attribute_type": "scp_code",
            "question": "Is this a normal ECG?", "attribute": ["normal ecg"]}
    gold = [(0, 1, "yes", 8), (1, 8, "no", 2), (2, 2, "yes", 3), (3, 3, "no", 8)]  # id, ECG, gold, swapped ECG
    compare = {"question_id": 1, "template_id": 44, "question_type": "comparison_consecutive-verify",
               "attribute_type": "scp_code", "attribute": ["myocardial infarction in inferior leads"],
               "question": "Compared to the previous tracing, has myocardial infarction in inferior leads been newly "
                           "detected in the recent tracing?", "answer": ["yes"]}
    pairs = [(4, [1, 8], [2, 3]), (5, [2, 8], [3, 8])]  # id, ECGs, swapped ECGs
    folder = tmp_path / "template"  # a variant's folder, as generated sets are laid out
    folder.mkdir()
    (folder / "gold.json").write_text(json.dumps(
        [{**base, "sample_id": i, "ecg_id": [e], "answer": [a]} for i, e, a, _ in gold]
        + [{**compare, "sample_id": i, "ecg_id": e} for i, e, _ in pairs]))
    run = tmp_path / "random-ecg"
    run.mkdir()
    swaps = [(i, [s]) for i, _, _, s in gold] + [(i, s) for i, _, s in pairs]
    (run / "predictions.jsonl").write_text("".join(json.dumps({"sample_id": i, "variant": "template", "answer": "yes",
                                                               "probe": "random-ecg", "ecg_ids": s}) + "\n"
                                                   for i, s in swaps))
    samples = load_gold(folder / "gold.json").samples
    assert ("template", 4) in samples
    assert random_ecg_ceiling(run, samples, attributes) == {"ceiling": round(3 / 5, 4), "n": 5, "not_covered": 1,
                                                            "set_apart": [["template", 3]]}


def test_key_normalisation():
    assert key("  ST/T-Change. ") == "st t change" == key("st t change")


# ----------------------------------------------------------------------------------------- ECGBench suite
def test_statement_matcher_prefers_the_longest_phrase():
    from ecgllm.evaluation.ecgbench import StatementMatcher

    matcher = StatementMatcher.from_statements({"IMI": "inferior myocardial infarction", "SR": "sinus rhythm",
                                                "CLBBB": "complete left bundle branch block", "AFIB": "atrial fibrillation"})
    assert matcher("Sinus rhythm. Inferior myocardial infarction; LBBB.") == {"SR", "IMI", "CLBBB"}
    assert matcher("atrial fibrillation") == {"AFIB"} and matcher("nothing to see") == set()


def test_detection_metrics_from_scores_and_from_binary_answers_differ_and_are_labelled():
    import numpy as np

    from ecgllm.evaluation.ecgbench import SUPERCLASSES, superclass_detection

    y = np.array([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    truth = iter(y.ravel())

    def answerer(prompts):  # right on every question, with graded confidence
        out = []
        for _ in prompts:
            t = next(truth)
            out.append(("Yes." if t else "No.", 0.9 if t else 0.2))
        return out

    metrics, scores = superclass_detection(answerer, [None] * 4, y, batch=7, progress=False)
    assert metrics["macro_auc_from_scores"] == 1.0 and metrics["macro_f1"] == 1.0 and metrics["hamming_loss"] == 0.0
    assert "auc_from_binary_answers_as_anchors_report" in metrics and scores.shape == (4, len(SUPERCLASSES))


@needs_shared
def test_zero_shot_scores_a_constant_answer_at_chance_balanced_accuracy():
    from ecgllm.evaluation.ecgbench import zero_shot

    def always_no(prompts):
        return [("No.", 0.1) for _ in prompts]

    result = zero_shot(always_no, SHARED / "external/code15", progress=False)
    assert 0 < result["positives"] < result["questions"]
    # accuracy looks good because most answers are "no"; balanced accuracy shows a constant answer for what it is
    assert result["accuracy"] == round(1 - result["positives"] / result["questions"], 4)
    assert result["sensitivity"] == 0.0 and result["specificity"] == 1.0 and result["balanced_acc"] == 0.5


@needs_shared
def test_ecgbench_suite_runs_end_to_end_on_real_records(tmp_path, tiny_checkpoint):
    from ecgllm.evaluation.ecgbench import run_ecgbench

    metrics = run_ecgbench(tmp_path / "bench", str(SHARED / "ptbxl"), model=str(tiny_checkpoint), records=6,
                           external=str(SHARED / "external"), batch_size=8, progress=False)
    assert metrics["superclass_detection"]["questions"] == 30
    assert 0 <= metrics["report_generation"]["label_f1_micro"] <= 1
    assert metrics["multiple_choice"]["questions"] <= 6
    assert metrics["zero_shot_cpsc2018"]["records"] == 6 and metrics["zero_shot_code15"]["questions"] == 60
    lo, hi = metrics["zero_shot_code15"]["accuracy_ci95"]
    assert lo <= metrics["zero_shot_code15"]["accuracy"] <= hi
    assert (tmp_path / "bench/report.md").exists() and (tmp_path / "bench/metrics.json").exists()


@needs_shared
@pytest.mark.parametrize("truthful", [True, False])
def test_ecgbench_superclass_metrics_follow_the_answers_against_the_labels(tmp_path, tiny_checkpoint, monkeypatch,
                                                                          truthful):
    """An answerer that knows each record's superclasses (or says the opposite) scores a perfect (or a fully wrong)
    superclass detection: AUC from its P(yes), Hamming loss, F1 — so the metrics compare answers with the labels
    of the records asked about, not with anything else."""
    import ecgllm.evaluation.runner as runner
    from ecgllm.datasets import PTBXL
    from ecgllm.evaluation.ecgbench import SUPERCLASSES, run_ecgbench, superclass_question

    labels = PTBXL.load(SHARED / "ptbxl")
    question_of = {superclass_question(c): c for c in SUPERCLASSES}

    class Oracle:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __call__(self, prompts):
            answers = []
            for p in prompts:
                code = question_of.get(p.question)
                if code is None:
                    answers.append(("none", 0.5))
                    continue
                has = code in labels.labels(int(p.ecgs[0].meta["id"]), "superclass")
                said = has if truthful else not has
                answers.append(("yes" if said else "no", 1.0 if said else 0.0))
            return answers

    monkeypatch.setattr(runner, "ModelAnswerer", Oracle)
    metrics = run_ecgbench(tmp_path / "bench", str(SHARED / "ptbxl"), model=str(tiny_checkpoint), records=20,
                           batch_size=8, progress=False)["superclass_detection"]
    assert metrics["questions"] == 100 and metrics["unparseable"] == 0
    assert metrics["macro_auc_from_scores"] == (1.0 if truthful else 0.0)
    assert metrics["hamming_loss"] == (0.0 if truthful else 1.0)
    assert (metrics["macro_f1"] > 0.5) if truthful else (metrics["macro_f1"] == 0.0)


def test_all_five_baselines_are_scored_like_a_model(tmp_path, tiny_checkpoint, two_record_gold):
    import torch
    from safetensors.torch import save_file

    from ecgllm.datasets import PTBXL
    from ecgllm.evaluation.baselines import run_baselines
    from ecgllm.models import build_encoder
    from ecgllm.training.pretrain_encoder import save_encoder

    statements = list(PTBXL.load(FIXTURES / "ptbxl_labels").statements.index)
    run = tmp_path / "encoder_run"
    run.mkdir()
    torch.manual_seed(0)
    save_encoder(run, build_encoder("resnet1d", widths=[8, 16], n_tokens=2), "resnet1d",
                 {"widths": [8, 16], "n_tokens": 2}, "mv", 100.0)
    head = torch.nn.Linear(16, len(statements) + 5)
    torch.nn.init.constant_(head.bias, 5.0)  # every statement "found": the prompt lists all of them
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, run / "head.safetensors")
    (run / "labels.json").write_text(json.dumps({"all71": statements, "superclass": ["CD", "HYP", "MI", "NORM", "STTC"]}))
    summary = run_baselines([str(two_record_gold)], [str(two_record_gold)], str(FIXTURES / "ptbxl"), str(tmp_path / "bl"),
                            encoder=str(run), llm=str(tiny_checkpoint.parent / "llm"),
                            labels=str(FIXTURES / "ptbxl_labels"), progress=False,
                            which=["constant", "majority", "question-only", "classifier", "text-tags"])
    assert set(summary["per_baseline"]) == {"constant", "majority", "question-only", "classifier", "text-tags"}
    # the verify questions' majority answer is "yes" (6 of 7 samples): the prior gets exactly those right; the
    # constant answer says "no" to all seven, wrong on those six and, on the seventh, not an answer its template
    # (ECG-QA's 32 asks for a noise) allows
    assert summary["per_baseline"]["majority"] == pytest.approx(6 / 7, abs=1e-3)
    constant = [json.loads(line) for line in (tmp_path / "bl/constant/predictions.jsonl").read_text().splitlines()]
    assert [c["answer"] for c in constant] == [["no"]] * 7 and summary["per_baseline"]["constant"] == 0.0
    for name in summary["per_baseline"]:
        assert (tmp_path / "bl" / name / "metrics.json").exists()
    assert "| text-tags |" in (tmp_path / "bl/report.md").read_text()


def test_model_selection_carries_over_gone_candidates_only_on_the_same_questions(tmp_path, monkeypatch):
    """benchmarks/ecgqa_selection.py: a candidate whose run folders are gone is copied from an earlier result (and
    marked with that result's date) only beside one re-scored identically; one scored anew that the earlier result also holds must agree with it; the rule then
    picks, among candidates within 0.03 EM of the best, the one whose EM drops most with another patient's ECG."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_selection

    def run(name: str, probe: str, correct: list[bool]) -> None:
        folder = tmp_path / f"{name}-{probe}"
        folder.mkdir()
        rows = ["sample_id,question_type,gold,prediction,correct"] + [
            f"{i},single-choose,a,{'a' if c else 'b'},{c}" for i, c in enumerate(correct)]
        (folder / "per_sample.csv").write_text("\n".join(rows) + "\n")
        (folder / "metrics.json").write_text(json.dumps({"n": len(correct), "overall_em": sum(correct) / len(correct)}))
        (folder / "report.md").write_text(f"| model | `runs/{name}/final` |\n")

    run("new", "none", [True] * 9 + [False])
    run("new", "random-ecg", [True] * 5 + [False] * 5)
    earlier = {"environment": {"date": "2026-12-01T00:00:00Z"},
               "candidates": [{"name": "old", "model": "runs/old", "n": 10, "em": 0.9, "em_random_ecg": 0.8,
                               "drop_random_ecg": 0.1, "single_verify": None}]}
    old = ecgqa_selection.candidate(tmp_path, "old", earlier)
    assert old["carried_over_from"] == "2026-12-01" and old["em"] == 0.9
    new = ecgqa_selection.candidate(tmp_path, "new", earlier)
    assert new["em"] == 0.9 and new["drop_random_ecg"] == 0.4 and "carried_over_from" not in new
    with pytest.raises(SystemExit, match="no candidate was scored anew"):  # nothing ties the two question sets
        ecgqa_selection.check_carried_over([old, new])
    kept = {**earlier["candidates"][0], "name": "new", "n": 10, "em": 0.9, "em_random_ecg": 0.5}
    rescored = ecgqa_selection.candidate(tmp_path, "new", {**earlier, "candidates": [earlier["candidates"][0], kept]})
    ecgqa_selection.check_carried_over([old, rescored])
    assert ecgqa_selection.choose([old, new]) == "new"
    assert ecgqa_selection.choose([old, {**new, "em": 0.85}]) == "old"  # 0.05 below the best: not eligible
    with pytest.raises(SystemExit, match="not the same questions"):
        ecgqa_selection.candidate(tmp_path, "new", {**earlier, "candidates": [{**earlier["candidates"][0], "name": "new"}]})
    with pytest.raises(SystemExit, match="no run folders"):
        ecgqa_selection.candidate(tmp_path, "gone", earlier)


def test_candidate_rule_needs_a_bootstrap_interval_over_ecgs_above_zero_and_kept_reliance(tmp_path, monkeypatch):
    """benchmarks/ecgqa_candidate.py: (a) on official valid, EM(candidate) - EM(default) with a paired bootstrap
    interval over ECGs above 0; (b) on generated valid questions drawn as ECG-QA drew them, EM and the fall with
    another patient's ECG at most 0.03 below the default's."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_candidate

    def run(name: str, correct: list[bool], ecgs: list[int]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rows = ["sample_id,variant,question_type,template_id,ecg_id,gold,prediction,correct"] + [
            f"{i},template,single-choose,3,{e},a,{'a' if c else 'b'},{c}" for i, (c, e) in enumerate(zip(correct, ecgs))]
        (folder / "per_sample.csv").write_text("\n".join(rows) + "\n")
        return folder

    ecgs = [i // 2 for i in range(200)]  # two questions an ECG
    default = run("d", [i % 2 == 0 for i in range(200)], ecgs)
    better = run("c", [i % 2 == 0 or i % 3 == 0 for i in range(200)], ecgs)
    same = run("s", [i % 2 == 0 for i in range(200)], ecgs)
    test = ecgqa_candidate.paired_test(default, better)
    assert test["ecgs"] == 100 and test["only_default_correct"] == 0 and test["em_difference"] > 0
    assert test["em_difference_ci95"][0] > 0
    tie = ecgqa_candidate.paired_test(default, same)
    assert tie["em_difference_ci95"] == [0.0, 0.0] and tie["mcnemar_p_value"] == 1.0  # no discordant pair
    gen = {"em": 0.6, "drop_random_ecg": 0.10}
    result = {"official_valid_paired": test, "default": {"valid_grouped": gen},
              "candidate": {"valid_grouped": {"em": 0.58, "drop_random_ecg": 0.08}}}
    assert ecgqa_candidate.decide(result)["replace"]
    result["candidate"]["valid_grouped"]["drop_random_ecg"] = 0.06  # relies on the ECG less: kept out
    assert not ecgqa_candidate.decide(result)["replace"]
    result["candidate"]["valid_grouped"] = {"em": 0.56, "drop_random_ecg": 0.12}  # 0.04 below on EM: kept out
    assert not ecgqa_candidate.decide(result)["replace"]
    assert not ecgqa_candidate.decide({**result, "official_valid_paired": tie,
                                       "candidate": {"valid_grouped": gen}})["replace"]


def test_candidate_runs_are_spread_over_the_cores_and_a_failure_stops_with_a_sentence(tmp_path, monkeypatch):
    """benchmarks/ecgqa_candidate.py runs every (model, set, probe) evaluation once, pinned to one of the cores; a
    model scored before takes no core from the other (its runs resume at once), and a failed run is named."""
    import os
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_candidate

    def fake_eval(model, data, signals, out, probe):
        code = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text(str(sorted(os.sched_getaffinity(0))))"
        return [sys.executable, "-c", "raise SystemExit(1)" if "broken" in str(data) else code]

    monkeypatch.setattr(ecgqa_candidate, "eval_command", fake_eval)
    cores = sorted(os.sched_getaffinity(0))[:2]
    models = {"default": tmp_path / "d", "candidate": tmp_path / "c"}
    sets = {"a": tmp_path / "a.json", "b": tmp_path / "b.json"}
    ecgqa_candidate.evaluate_both(models, sets, tmp_path, tmp_path, cores)
    runs = sorted(p.name for p in tmp_path.glob("*-*-*"))
    assert runs == sorted(f"{m}-{s}-{p}" for m in models for s in sets for p in ("none", "random-ecg"))
    # each run pinned to one core; with two cores, both took runs
    assert {(tmp_path / r).read_text() for r in runs} == {str([c]) for c in cores}
    with pytest.raises(SystemExit, match="an evaluation failed .*broken"):
        ecgqa_candidate.evaluate_both(models, {"broken": tmp_path / "broken.json"}, tmp_path, tmp_path, cores[:1])
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no taskset: the worker's error is reported, not lost
    with pytest.raises(SystemExit, match="an evaluation failed .*FileNotFoundError"):
        ecgqa_candidate.evaluate_both(models, sets, tmp_path, tmp_path / "other", cores)


def test_a_candidate_comparison_copies_the_default_runs_of_an_earlier_one_only_for_the_same_default(tmp_path,
                                                                                                 monkeypatch):
    """``--default-runs``: the default's run folders and the question sets of an earlier --work are copied into the
    new one (never the earlier candidate's, never over a folder the new one has); an earlier work scored with another
    default, valid_gen or features stops with a sentence."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_candidate

    inputs = {}
    for name in ("default", "candidate", "valid_gen", "features"):
        inputs[name] = tmp_path / f"{name}.bin"
        inputs[name].write_text(name)
    earlier, work = tmp_path / "earlier", tmp_path / "work"
    ecgqa_candidate.check_work(earlier, inputs)
    for folder in ("sets", "default-valid_gen-none", "default-valid_gen-random-ecg", "candidate-valid_gen-none"):
        (earlier / folder).mkdir()
        (earlier / folder / "predictions.jsonl").write_text(folder)
    (work / "default-valid_gen-none").mkdir(parents=True)
    (work / "default-valid_gen-none" / "predictions.jsonl").write_text("kept")
    other = {**inputs, "candidate": tmp_path / "candidate2.bin"}
    other["candidate"].write_text("another candidate")
    copied = ecgqa_candidate.reuse_default_runs(earlier, work, other)
    assert copied == ["sets/predictions.jsonl", "default-valid_gen-random-ecg"]
    assert not (work / "candidate-valid_gen-none").exists()
    assert (work / "default-valid_gen-none" / "predictions.jsonl").read_text() == "kept"
    assert (work / "sets" / "predictions.jsonl").read_text() == "sets"
    assert not list(work.glob(".*partial*")) and not list((work / "sets").glob("*.partial"))
    assert ecgqa_candidate.reuse_default_runs(earlier, work, other) == []  # nothing left to copy
    clash = tmp_path / "clash"
    (clash / "sets").mkdir(parents=True)
    (clash / "sets" / "predictions.jsonl").write_text("other questions")
    with pytest.raises(SystemExit, match="holds other questions"):
        ecgqa_candidate.reuse_default_runs(earlier, clash, other)
    assert not (clash / "default-valid_gen-none").exists()  # refused before anything was copied
    for changed in ("valid_gen", "default"):
        inputs[changed].write_text(f"another {changed}")
        with pytest.raises(SystemExit, match=f"scored with another {changed}"):
            ecgqa_candidate.reuse_default_runs(earlier, tmp_path / "third", inputs)
        inputs[changed].write_text(changed)
    with pytest.raises(SystemExit, match="no inputs.json"):
        ecgqa_candidate.reuse_default_runs(tmp_path, tmp_path / "third", inputs)


@needs_shared
def test_official_mix_weighs_templates_by_their_official_share(tmp_path, monkeypatch):
    """Template 1 ("Does this ECG show symptoms of X?") is some seventy times as common in the official train split as
    template 2 ("Is this a normal ECG?"): all right on 1 and all wrong on 2 is EM 0.5 by question, near 1 by the mix."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_evidence

    run = tmp_path / "run"
    run.mkdir()
    rows = ["sample_id,variant,question_type,template_id,ecg_id,gold,prediction,correct"] + [
        f"{i},template,single-verify,{1 + i % 2},{i},yes,{'yes' if i % 2 == 0 else 'no'},{i % 2 == 0}" for i in range(40)]
    (run / "per_sample.csv").write_text("\n".join(rows) + "\n")
    mix = ecgqa_evidence.official_mix({"em": run})
    assert 0.95 < mix["em"] < 1.0
    assert 0.05 < mix["covered_share"] < 0.08


@needs_shared
def test_the_constant_baseline_says_no_to_yes_no_questions_and_none_to_the_others():
    from ecgllm.datasets.ecgqa import QASample
    from ecgllm.evaluation.baselines import constant_answers

    kinds = ["single-verify", "comparison_consecutive-verify", "single-choose", "single-query",
             "comparison_irrelevant-query"]
    samples = [QASample(sample_id=i, template_id=1, question_id=0, question_type=kind, attribute_type="scp_code",
                        question="?", answer=["yes"], ecg_id=[1])
               for i, kind in enumerate(kinds)]
    assert constant_answers(samples) == ["no", "no", "none", "none", "none"]


def test_question_only_baseline_does_not_depend_on_the_thread_count():
    """Its lbfgs fit took another path with two BLAS threads than with one (EM 0.4375 vs 0.4345 on the evidence
    page's questions); it now fits on one thread whatever the caller's setting."""
    from threadpoolctl import threadpool_limits

    from ecgllm.evaluation.baselines import question_only_answers

    train = list(load_gold([str(SHARED / "ecgqa/ecgqa/ptbxl/template/train"),
                            str(SHARED / "ecgqa/official_sample/template_train.json")]).samples.values())
    test = list(load_gold(str(SHARED / "ecgqa/official_sample/template_valid.json")).samples.values())
    with threadpool_limits(1):
        one = question_only_answers(train, test)
    with threadpool_limits(2):
        two = question_only_answers(train, test)
    assert one == two


def test_a_page_of_the_default_says_when_a_newer_default_has_shipped(tmp_path, monkeypatch):
    """benchmarks/common.py: a result names the checkpoint it measured by its weights; a page of the shipped default
    stays silent while that is today's default and warns, naming both, once another has shipped. The fingerprint read
    from git history (scripts/stamp_measured_model.py) is the one read from the folder."""
    import hashlib
    import json
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    monkeypatch.syspath_prepend(str(root / "scripts"))
    import common
    import stamp_measured_model

    today = common.measured_model(common.DEFAULT_CHECKPOINT)
    assert common.stale_default_note({"measured_model": today}) == ""
    assert "does not name" in common.stale_default_note({})
    other = tmp_path / "other"
    shutil.copytree(common.DEFAULT_CHECKPOINT, other)
    from safetensors.torch import load_file, save_file

    for name in ("model.safetensors", "projector.safetensors"):  # one weight changed (either layout): other weights
        if (other / name).exists():
            state = load_file(other / name)
            first = sorted(state)[0]
            state[first] = state[first] + 1
            save_file(state, other / name)
            break
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "shipped_from": "an_earlier_run"}))
    earlier = common.measured_model(other)
    assert earlier["fingerprint"] != today["fingerprint"]
    note = common.stale_default_note({"measured_model": earlier})
    assert "an_earlier_run" in note and earlier["fingerprint"] in note and today["fingerprint"] in note
    assert earlier["signal_fingerprint"] != today["signal_fingerprint"]  # that weight answers signals too
    assert "Not measured on today's default" in common.stale_default_note({"measured_model": earlier},
                                                                           reads_pictures=False)
    pictures = tmp_path / "pictures"  # the picture path alone changed: an image encoder weight, a head added
    shutil.copytree(common.DEFAULT_CHECKPOINT, pictures)
    state = load_file(pictures / "model.safetensors")
    first = sorted(k for k in state if k.startswith("image_encoder."))[0]
    state[first] = state[first] + 1
    save_file(state, pictures / "model.safetensors")
    (pictures / "image_quality.safetensors").write_bytes((other / "config.json").read_bytes()[:64])
    (pictures / "config.json").write_text(json.dumps({**config, "shipped_from": "a_picture_path_before"}))
    before = common.measured_model(pictures)
    assert before["fingerprint"] != today["fingerprint"] and before["signal_fingerprint"] == today["signal_fingerprint"]
    assert "Not measured on today's default" in common.stale_default_note({"measured_model": before})
    signals_only = common.stale_default_note({"measured_model": before}, reads_pictures=False)
    assert "only in its picture path" in signals_only and before["fingerprint"] in signals_only
    assert "Not measured" not in signals_only
    out = tmp_path / "runs"  # a benchmark's run folders resume by question: another model's answers are refused
    assert common.claim_run_folder(out, common.DEFAULT_CHECKPOINT) == today
    assert common.claim_run_folder(out, common.DEFAULT_CHECKPOINT) == today
    with pytest.raises(SystemExit, match="holds answers of another model"):
        common.claim_run_folder(out, other)
    pinned = tmp_path / "pinned"  # a folder that is no model's: its files' bytes, ordered by path parts, not by string
    (pinned / "a").mkdir(parents=True)
    (pinned / "a" / "x.safetensors").write_bytes(b"X")
    (pinned / "a-b.safetensors").write_bytes(b"Y")
    assert common.fingerprint(pinned) == hashlib.sha256(b"a/x.safetensorsXa-b.safetensorsY").hexdigest()[:12]
    changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src/ecgllm/data/checkpoint"],
                             capture_output=True, text=True, check=True).stdout
    if not changed:  # a checkout whose default is committed as it is on disk
        assert stamp_measured_model.checkpoint_at("HEAD") == today


def test_committed_pages_of_the_default_warn_exactly_when_it_has_changed(monkeypatch):
    """A new default shipped without re-measuring its pages must leave them warning (their `--page-only` render
    adds the note); pages measured on today's default carry no warning. The evidence page's render and the README
    block it writes put the note in when the model measured is another."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    import common
    import ecgqa_evidence

    pages = {"ecgqa_evidence.json": (["docs/results/ecgqa_evidence.md", "README.md"], False),
             "images.json": (["docs/results/images.md"], True),
             "ecgbench_images.json": (["docs/results/ecgbench_images.md"], True)}  # (pages, reads pictures)
    for name, (texts, reads_pictures) in pages.items():
        result = json.loads((common.RESULTS / name).read_text())
        assert "measured_model" in result, f"{name} names no model (scripts/stamp_measured_model.py)"
        note = common.stale_default_note(result, reads_pictures)
        for text in texts:
            page = (root / text).read_text()
            assert (note in page) if note else ("Not measured on today's default" not in page), (
                f"{text} is not rendered for the default it measured: run its `--page-only`")
    evidence = json.loads((common.RESULTS / "ecgqa_evidence.json").read_text())
    other = {**evidence, "measured_model": {"fingerprint": "0" * 12, "shipped_from": "an_earlier_run"}}
    assert "an_earlier_run" in ecgqa_evidence.render_page(other) and "an_earlier_run" in ecgqa_evidence.readme_block(other)


def test_a_shipped_image_encoder_names_every_distillation_that_made_it(monkeypatch):
    """The images page lists the distillation runs behind the shipped image encoder, first first, from the lineage
    the encoder recorded; shipping shrinks that lineage's machine paths as it does the recipe's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    monkeypatch.syspath_prepend(str(root / "scripts"))
    import images
    import ship_checkpoint

    described = {"distillation": {"output_dir": "runs/ecgqa/third", "init_student": "runs/ecgqa/x/final"},
                 "continued_from": [{"output_dir": "runs/ecgqa/first"},
                                    {"output_dir": "/abs/runs/ecgqa/second", "init_student": "runs/ecgqa/first"}]}
    assert images.recipe_chain(described) == ["first", "second", "third"]
    before_lineage = {"distillation": {"output_dir": "runs/ecgqa/image_encoder_more",
                                       "init_student": "runs/ecgqa/image_encoder"}}
    assert images.recipe_chain(before_lineage) == ["image_encoder", "image_encoder_more"]
    for model_folder in ("runs/ecgqa/x/final", "src/ecgllm/data/checkpoint"):  # a model folder is no recipe
        assert images.recipe_chain({"distillation": {"output_dir": "runs/ecgqa/a", "init_student": model_folder}}) \
            == ["a"]
    assert images.distill_chain({"distill_run": "image_encoder_more", "warm_started": True}) == [
        "image_encoder", "image_encoder_more"]  # a result written before chains were recorded
    assert ship_checkpoint.machine_local({"teacher": "/a/b/run", "continued_from": [{"output_dir": "/x/y/first"}],
                                          "epochs": 5}) == {"teacher": "run", "continued_from": [
                                              {"output_dir": "first"}], "epochs": 5}
    assert ship_checkpoint.machine_local({"data": ["/a/b.jsonl", "runs/c.jsonl"]}, absolute_only=True) == {
        "data": ["b.jsonl", "runs/c.jsonl"]}  # a card's recipe keeps its relative paths


def test_the_images_page_names_the_chain_and_what_its_ecgqa_questions_ask_about(monkeypatch, tmp_path):
    """The page written from a result with a three-run chain lists the three recipes, and its ECG-QA table says how
    many of the ECGs asked about are of ECG-QA test patients and were seen in training; a result without those
    fields (written before them) still renders."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    import images

    monkeypatch.setattr(images, "DOC", tmp_path / "images.md")
    committed = json.loads((root / "benchmarks/results/images.json").read_text())
    saved = {**{k: v for k, v in committed.items() if k != "distill_chain"},  # as written before these fields,
             "distill_run": "image_encoder_more", "warm_started": True,          # when this was the shipped encoder
             "ecgqa": {k: {kk: vv for kk, vv in v.items() if kk not in ("seen_in_training", "test_patient_records")}
                       for k, v in committed["ecgqa"].items()}}
    images.write_doc(saved, saved["command"])
    assert "of ECG-QA test patients" not in images.DOC.read_text()
    assert "recipes/ecgqa/image_encoder_more.yaml   # continued from the one above" in images.DOC.read_text()
    seen = {"records_evaluated": 160, "records_seen_in_training": 0}
    newer = {**saved, "distill_chain": ["image_encoder", "image_encoder_more", "image_encoder_truth"],
             "distill_run": "image_encoder_truth",
             "ecgqa": {k: {**v, "seen_in_training": seen, "test_patient_records": {"records": 160,
                                                                                  "of_test_patients": 160}}
                       for k, v in saved["ecgqa"].items()}}
    images.write_doc(newer, newer["command"])
    page = images.DOC.read_text()
    assert "recipes/ecgqa/image_encoder_truth.yaml   # continued from the one above" in page
    assert "continued from 2 earlier distillations on other renders: `image_encoder`, `image_encoder_more`" in page
    assert "over 160 ECGs, 160 of them of ECG-QA test patients; seen in training by any stage of the checkpoint: 0" in page
    photo = committed["printed_photographed"]  # the printouts photographed worse: one row per seed, from the JSON
    assert len(photo["draws"]) == len(photo["seeds"]) >= 5
    for draw in photo["draws"]:
        assert f"| {draw['seed']} | {draw['distortions_per_picture']} | {draw['llm_accuracy']} | " \
               f"{draw['label_token_auc']} | {draw['same_answer']} of {draw['n']} |" in page
        assert 0 < draw["distortions_per_picture"] and len(draw["applied"]) == draw["n"]  # every picture was drawn
    assert f"{photo['same_answer_share']:.0%} of the answers are those given to the pictures as they are" in page
    committed_page = (root / "docs/results/images.md").read_text()  # the committed page is the JSON's too
    assert all(f"| {d['seed']} | {d['distortions_per_picture']} | {d['llm_accuracy']} | {d['label_token_auc']} | "
               f"{d['same_answer']} of {d['n']} |" in committed_page for d in photo["draws"])
    for file in (root / "benchmarks/results").glob("image_encoder_selection*.json"):  # encoders tried, kept or not
        selection = json.loads(file.read_text())
        for row in selection["candidates"]:  # a row read at a view shift is its own candidate
            shift = row.get("view_shift", 0)
            kept = "yes" if (row["candidate"], shift) == (selection["chosen"], selection.get("chosen_view_shift", 0)) \
                else "no"
            label = "" if "view_shift" not in row else \
                f" read at view shift {shift}" if shift else " reading the page alone"
            assert f"`{row['candidate']}`{label} | " \
                   f"{row['image_clean_super_macro_auc']} | {row['image_augmented_super_macro_auc']} | {row['score']} | " \
                   f"{kept} |" in page
        if "teacher_signal" in selection:
            assert f"reading the signals | {selection['teacher_signal']['signal_super_macro_auc']} (signals)" in page
        chosen = Path(selection["chosen"]).name
        if chosen in newer["distill_chain"] and chosen != newer["distill_run"]:  # shipped as the start of the encoder
            assert f"`{file.name}` chose `{chosen}` by its rule: the shipped encoder" in page
        elif chosen not in ("checkpoint", newer["distill_run"]):  # chosen, not shipped: the page says where to read why
            assert f"`{file.name}` chose `{chosen}` by its rule, and it was not shipped: " \
                   f"`recipes/ecgqa/{chosen}.yaml`" in page
    # the selection that chose the last of the chain gives the page its command, paths as the other lines write them
    fake = {"a.json": {"chosen": "../cache/runs/ecgqa/image_encoder_truth", "split": "PTB-XL folds 1-9 ∩ ECG-QA valid",
                       "command": "python benchmarks/image_encoder_selection.py --candidates ../cache/runs/ecgqa/x"}}
    assert images.selection_command(newer["distill_chain"], fake) == ("python benchmarks/image_encoder_selection.py "
                                                                "--candidates runs/ecgqa/x   # chosen on PTB-XL folds "
                                                                "1-9 ∩ ECG-QA valid")
    from ecgllm.datasets.split_policy import load_policy

    policy = load_policy()
    test_record = min(policy.test_patient_records)
    other = next(i for i in range(1, 30000) if i not in policy.test_patient_records | policy.valid_patient_records)
    rows = [{"template_id": 1, "question_id": 0, "sample_id": k, "question_type": "single-verify",
             "attribute_type": "scp_code", "question": "Is this a normal ECG?", "answer": ["no"], "ecg_id": ecg,
             "attribute": None} for k, ecg in enumerate([[test_record], [test_record], [other]])]
    questions = tmp_path / "questions.json"
    questions.write_text(json.dumps(rows))
    assert images.test_patient_share(str(questions), 2) == {"records": 1, "of_test_patients": 1}
    assert images.test_patient_share(str(questions), 3) == {"records": 2, "of_test_patients": 1}
    unchecked = {**newer, "ecgqa": {k: {**v, "seen_in_training": {"split_policy": "not checked"}}
                                    for k, v in newer["ecgqa"].items()}}
    images.write_doc(unchecked, newer["command"])  # a run that could not tell what training saw: no sentence
    assert "of ECG-QA test patients" not in images.DOC.read_text()


def test_the_shipped_card_takes_the_figures_of_the_selection_that_chose_those_very_weights(tiny_checkpoint, tmp_path,
                                                                                          monkeypatch):
    """scripts/ship_checkpoint.py --selected-by: the figures on ECG-QA valid go into the card only from a result that
    scored these weights as its candidate and decided to replace the default."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    monkeypatch.syspath_prepend(str(root / "scripts"))
    import common
    import ship_checkpoint

    figures = {"n": 10, "em": 0.6, "em_random_ecg": 0.4, "drop_random_ecg": 0.2}
    today = common.fingerprint(common.DEFAULT_CHECKPOINT)  # the default the selection weighed it against
    signals = common.fingerprint(common.DEFAULT_CHECKPOINT, signals_only=True)  # ... as a signal meets it
    result = {"fingerprints": {"candidate": common.fingerprint(tiny_checkpoint), "default": today},
              "signal_fingerprints": {"candidate": common.fingerprint(tiny_checkpoint, signals_only=True),
                                      "default": signals},
              "decision": {"replace": True}, "candidate": {"official_valid": figures, "valid_grouped": figures}}
    path = tmp_path / "ecgqa_candidate_x.json"
    path.write_text(json.dumps(result))
    metrics = ship_checkpoint.selection_metrics(path, tiny_checkpoint)
    assert metrics["official_valid_em"] == 0.6 and metrics["valid_grouped_drop_random_ecg"] == 0.2
    assert metrics["selected_by"] == path.name and "ECG-QA valid" in metrics["split"]
    path.write_text(json.dumps({**result, "signal_fingerprints": {**result["signal_fingerprints"],
                                                                  "candidate": "f" * 12}}))
    with pytest.raises(SystemExit, match="scored other weights"):
        ship_checkpoint.selection_metrics(path, tiny_checkpoint)
    path.write_text(json.dumps({**result, "signal_fingerprints": {**result["signal_fingerprints"],
                                                                  "default": "0" * 12}}))
    with pytest.raises(SystemExit, match="against another default"):
        ship_checkpoint.selection_metrics(path, tiny_checkpoint)
    earlier = {k: v for k, v in result.items() if k != "signal_fingerprints"}  # a result from before they existed
    path.write_text(json.dumps(earlier))  # held to the whole model, which it names
    assert ship_checkpoint.selection_metrics(path, tiny_checkpoint)["official_valid_em"] == 0.6
    path.write_text(json.dumps({**result, "decision": {"replace": False}}))
    with pytest.raises(SystemExit, match="does not replace the default"):
        ship_checkpoint.selection_metrics(path, tiny_checkpoint)
    evidence = json.loads((root / "benchmarks/results/ecgqa_evidence.json").read_text())  # --measured-by
    path.write_text(json.dumps(evidence))
    if evidence["measured_model"].get("signal_fingerprint") == signals:  # the page measured today's default
        metrics = ship_checkpoint.evidence_metrics(path, common.DEFAULT_CHECKPOINT)
        assert metrics["generated_test_em"] == evidence["generated_test"]["em"]
        assert metrics["generated_test_records_seen_in_training"] == 0
    with pytest.raises(SystemExit, match="measured other weights"):
        ship_checkpoint.evidence_metrics(path, tiny_checkpoint)
    test = {"split": "ECG-QA test", "n": 5, "seen_in_training": {"records_seen_in_training": 0}, "em": 0.7,
            "blind_em": 0.4, "random_ecg_em": 0.5, "single_verify_balanced_acc": 0.8}
    measured = {"generated_test": test, "normal_ecg": {"balanced_acc": 0.9},
                "measured_model": {"fingerprint": "e" * 12,  # another picture path, the same signal path
                                   "signal_fingerprint": common.fingerprint(tiny_checkpoint, signals_only=True)}}
    path.write_text(json.dumps(measured))
    assert ship_checkpoint.evidence_metrics(path, tiny_checkpoint)["generated_test_em"] == 0.7
    path.write_text(json.dumps({**measured, "measured_model": {"fingerprint": common.fingerprint(tiny_checkpoint)}}))
    assert ship_checkpoint.evidence_metrics(path, tiny_checkpoint)["normal_ecg_balanced_acc"] == 0.9  # an earlier one
    path.write_text(json.dumps({**measured, "measured_model": {"fingerprint": "e" * 12}}))
    with pytest.raises(SystemExit, match="measured other weights"):  # ... held to the whole model
        ship_checkpoint.evidence_metrics(path, tiny_checkpoint)


def test_the_zero_shot_section_shows_every_figure_of_its_json(monkeypatch):
    """The evidence page's zero-shot section: a row per dataset, the AUC per statement asked (blank where a dataset
    was not asked it), and every other figure of the JSON named in a sentence, none dropped."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_evidence

    zero = {"a": {"records": 6, "questions": 24, "positives": 5, "accuracy": 0.875, "accuracy_ci95": [0.69, 0.957],
                  "sensitivity": 0.4, "specificity": 1.0, "balanced_acc": 0.7, "macro_auc_from_scores": 0.625,
                  "per_class_auc": {"first degree av block": 1.0}, "unparseable": 0, "macro_f1": 0.417,
                  "per_question": [{"q": 1}]},
            "b": {"records": 10, "questions": 60, "positives": 10, "accuracy": 0.967, "accuracy_ci95": [0.886, 0.991],
                  "sensitivity": 0.9, "specificity": 0.98, "balanced_acc": 0.94, "macro_auc_from_scores": 1.0,
                  "per_class_auc": {"sinus bradycardia": 1.0}, "unparseable": 0}}
    page = "\n".join(ecgqa_evidence.zero_shot_section(zero))
    assert "| a | 6 | 24 | 5 | 0.875 [0.690, 0.957] | 0.400 | 1.000 | 0.700 | 0.625 | 0 |" in page
    assert "| first degree av block | 1.000 |  |" in page and "| sinus bradycardia |  | 1.000 |" in page
    assert "Further figures: a: macro_f1 0.417." in page and "per_question" not in page


def test_what_training_saw_of_an_evaluation_reads_as_a_sentence(monkeypatch):
    """Each evidence section says, in words, how many of its ECGs and patients any stage saw; a result that could not
    tell (no recorded records) says it is not known instead of giving a count."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ecgqa_evidence

    seen = {"split_policy": "e5a9", "records_evaluated": 1662, "records_seen_in_training": 0,
            "patients_evaluated": 1424, "patients_seen_in_training": 0, "stages_with_unrecorded_records": []}
    assert ecgqa_evidence.seen_sentence(seen) == ("Seen in training by any stage of the checkpoint: 0 of the 1662 ECGs "
                                                  "and 0 of their 1424 patients (split policy e5a9).")
    assert "stages that did not record their records: instruct" in ecgqa_evidence.seen_sentence(
        {**seen, "stages_with_unrecorded_records": ["instruct"]})
    assert ecgqa_evidence.seen_sentence({"split_policy": "not checked"}).startswith("Seen in training: not known")
    no_patients = {k: v for k, v in seen.items() if not k.startswith("patients")}
    assert ecgqa_evidence.seen_sentence(no_patients) == ("Seen in training by any stage of the checkpoint: 0 of the "
                                                         "1662 ECGs (split policy e5a9).")
    assert ecgqa_evidence.seen_sentence(None).startswith("Seen in training: not known")


def test_the_evidence_figure_is_drawn_from_the_committed_json(monkeypatch, tmp_path):
    """The evidence page's figure comes from its JSON alone (a PNG is written for the committed result), and the
    committed page embeds the committed figure."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    import ecgqa_evidence

    result = json.loads((root / "benchmarks/results/ecgqa_evidence.json").read_text())
    plotted = ecgqa_evidence.plot_evidence(result, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plotted["sets"]) == {k for k, _ in ecgqa_evidence.FIGURE_SETS if k in result} >= {"generated_test"}
    for name, bars in plotted["sets"].items():  # each bar is its set's figure, each probe where it belongs
        assert bars == {f: result[name][f] for f in ("em", "random_ecg_em", "blind_em")}
    assert plotted["per_question_type"] == result["generated_test"]["per_question_type"]
    # a line over every set that has baselines, at the best of that set's own baselines
    assert set(plotted["best_baseline"]) == {k for k in plotted["sets"] if result[k].get("baselines")} >= {
        "generated_test", "official_valid"}
    for name, best in plotted["best_baseline"].items():
        assert best == max(result[name]["baselines"].values())
    g = result["generated_test"]  # the margin target is measured against that best, named
    assert g["baselines"][g["best_baseline"]] == g["best_baseline_em"] == max(g["baselines"].values())
    assert g["margin_over_best_baseline"] == round(g["em"] - g["best_baseline_em"], 4)
    assert "constant" in g["baselines"] and "constant" in result["official_valid"]["baselines"]
    assert "](ecgqa_evidence.png)" in (root / "docs/results/ecgqa_evidence.md").read_text()
    assert (root / "docs/results/ecgqa_evidence.png").exists()


def test_the_images_page_shows_the_bundled_record_rendered_clean_and_distorted(monkeypatch, tmp_path):
    """The example sheet: the bundled record once clean and once distorted in each layout, seeded (the same sheet
    twice), and the committed images page embeds the committed sheet."""
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "benchmarks"))
    import images

    examples = images.draw_examples(tmp_path / "a.jpg")
    again = images.draw_examples(tmp_path / "b.jpg")
    assert examples == again and examples[0]["distortions"] == [] and all(e["distortions"] for e in examples[1:])
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()  # seeded to the pixel
    assert {e["layout"] for e in examples} == {"3x4", "6x2", "12x1"}
    assert Image.open(tmp_path / "a.jpg").size == (1100, 850)  # four half-size 1100x850 pages, two by two
    assert "](images_examples.jpg)" in (root / "docs/results/images.md").read_text()
    assert (root / "docs/results/images_examples.jpg").exists()
