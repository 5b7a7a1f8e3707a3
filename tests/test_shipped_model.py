"""The shipped default checkpoint: loads offline on a CPU, answers from the ECG (not from the wording), compares
two records and reads a picture of a printout. Uses the real SmolLM2 base, so it is marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecgllm.models.default import SHIPPED_CHECKPOINT
from tests.conftest import FIXTURES, PTBXL_1

CLI = [sys.executable, "-m", "ecgllm.serving.cli"]
# Atrial fibrillation records of ECG-QA test patients (PTB-XL fold 10): no training stage may see them
AFIB_IDS = (3544, 4203)
AFIB = [FIXTURES / f"ptbxl_afib/{i:05d}_lr.hea" for i in AFIB_IDS]
NORMAL = [PTBXL_1, FIXTURES / "ptbxl/records100/00000/00002_lr.hea"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assistant():
    from ecgllm import ECGAssistant

    return ECGAssistant.load(SHIPPED_CHECKPOINT)  # the shipped one, as the CLI runs below ($ECGLLM_MODEL unset)


def _ask(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ECGLLM_MODEL"}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=600, env=env)


def fifty_prompts() -> list:
    """50 fixed single-ECG questions (13 wordings, the AF and normal fixtures) to compare two loads of one model."""
    from ecgllm import read_ecg
    from ecgllm.evaluation.runner import Prompt

    questions = ["Is this a normal ECG?", "Does this ECG show atrial fibrillation?", "Which rhythm does this ECG show?",
                 "Does this ECG show symptoms of non-specific st changes?", "What is the heart axis of this ECG?",
                 "Does this ECG show left ventricular hypertrophy?", "Which noise does this ECG show?",
                 "Does this ECG show first degree av block?", "What leads are showing non-specific st changes?",
                 "Does this ECG show sinus rhythm?", "Does this ECG show complete right bundle branch block?",
                 "What form-related symptoms does this ECG show?", "Does this ECG show a pacemaker?"]
    ecgs = [read_ecg(p) for p in AFIB + NORMAL]
    return [Prompt(q, [e], [""]) for q in questions for e in ecgs][:50]


def test_the_default_checkpoint_is_shipped_small_and_self_describing():
    weights = sum(p.stat().st_size for p in SHIPPED_CHECKPOINT.rglob("*.safetensors"))
    assert 0 < weights <= 40 * 2**20
    config = json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())["model"]
    assert config["llm"] is None and config["encoder_init"] is None  # the embedded base; no machine-local paths
    for path in SHIPPED_CHECKPOINT.rglob("*.json"):
        assert "/work/" not in path.read_text() and "/home/" not in path.read_text(), path


def test_the_default_checkpoint_has_a_card_and_answers_50_questions_as_it_did_without_one(assistant, tmp_path):
    """The shipped folder was converted to carry a card (preparation, labels, provenance); loading it with the card
    gives the same answers and P(yes) to 50 fixed questions as the folder without it (how it shipped before)."""
    import shutil

    from ecgllm import ECGAssistant
    from ecgllm.datasets.split_policy import load_policy
    from ecgllm.evaluation.runner import ModelAnswerer
    from ecgllm.models.card import file_sha256, read_card

    card = read_card(SHIPPED_CHECKPOINT)
    assert card.kind == "language_model" and card.provenance.shipped_from
    assert card.prep == json.loads((SHIPPED_CHECKPOINT / "processor_config.json").read_text())["prep"]
    assert card.labels[-5:] and len(card.labels) == assistant.model.label_tokens.head.out_features
    assert card.provenance.split_policy_sha256 == load_policy().sha256
    assert card.provenance.training_records_sha256 == file_sha256(SHIPPED_CHECKPOINT / "training_records.json")
    legacy = tmp_path / "checkpoint"
    shutil.copytree(SHIPPED_CHECKPOINT, legacy, ignore=shutil.ignore_patterns("card.json"))
    without = ECGAssistant.load(legacy)
    prompts = fifty_prompts()
    answers = [ModelAnswerer(a.model, a.processor, batch_size=8, max_new_tokens=8)(prompts)
               for a in (assistant, without)]
    assert len(prompts) == 50 and answers[0] == answers[1]


def test_the_default_checkpoint_is_in_transformers_layout_and_answers_50_questions_as_in_the_older_one(
        assistant, tmp_path, monkeypatch):
    """The default ships in transformers' layout (`save_pretrained`: config.json of model_type "ecgllm", one
    model.safetensors without the base LLM's weights). Written in the layout it shipped in before (a file per part,
    as training runs still hold), it reads back to the same weights, the same fingerprint and the same answers to
    50 fixed questions; saved again from there, it is the same folder."""
    from safetensors import safe_open

    from ecgllm.evaluation.runner import ModelAnswerer
    from ecgllm.models import EcgLanguageModel, EcgProcessor
    from ecgllm.models.model_folder import WEIGHTS_FILE, is_legacy, saved_weights
    from tests.tiny_models import older_layout_copy

    config = json.loads((SHIPPED_CHECKPOINT / "config.json").read_text())
    assert config["model_type"] == "ecgllm" and config["architectures"] == ["EcgLanguageModel"]
    assert not is_legacy(SHIPPED_CHECKPOINT) and config["name"] == "ecgllm-default"
    with safe_open(str(SHIPPED_CHECKPOINT / WEIGHTS_FILE), framework="pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and not any(k.startswith("llm.") and "lora_" not in k for k in keys)
    assert (SHIPPED_CHECKPOINT / WEIGHTS_FILE).stat().st_size <= 40 * 2**20
    older = older_layout_copy(SHIPPED_CHECKPOINT, tmp_path / "older")
    assert is_legacy(older) and not (older / WEIGHTS_FILE).exists()
    converted = tmp_path / "converted"
    EcgLanguageModel.from_pretrained(older).save_pretrained(converted, EcgProcessor.from_pretrained(older))
    weights = [saved_weights(folder) for folder in (SHIPPED_CHECKPOINT, older, converted)]
    assert all(w.keys() == weights[0].keys() and all(torch.equal(w[k], weights[0][k]) for k in w) for w in weights)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import fingerprint  # what a results page records of the model it measured: the layout is not in it

    assert fingerprint(older) == fingerprint(converted) == fingerprint(SHIPPED_CHECKPOINT)
    prompts = fifty_prompts()
    answers = [ModelAnswerer(EcgLanguageModel.from_pretrained(folder), EcgProcessor.from_pretrained(folder),
                             batch_size=8, max_new_tokens=8)(prompts) for folder in (SHIPPED_CHECKPOINT, older)]
    assert len(prompts) == 50 and answers[0] == answers[1] and len(set(map(str, answers[0]))) > 5


def test_readme_question_on_the_bundled_record_from_the_shell():
    result = _ask("ask", str(PTBXL_1), "Does this ECG show atrial fibrillation?", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)["text"]
    assert answer.strip().lower().startswith("no"), answer  # PTB-XL record 1: sinus rhythm


def test_a_comparison_from_the_shell_is_the_python_apis(assistant):
    """The shell's `compare` gives the Python API's answer for the same two records, with both records measured."""
    result = _ask("compare", str(NORMAL[0]), str(NORMAL[1]), "What changed?", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    shown = json.loads(result.stdout)
    expected = assistant.compare(NORMAL[0], NORMAL[1], "What changed?")
    assert shown["text"].strip() and shown["text"] == expected.text
    assert len(shown["measurements"]) == 2 and all("heart_rate" in m for m in shown["measurements"])


def test_the_unseen_fixtures_are_of_held_out_patients():
    from ecgllm.datasets.split_policy import load_policy

    assert set(AFIB_IDS) <= load_policy().test_patient_records


def test_the_answer_follows_the_ecg(assistant):
    """The same question is scored by the ECG: both unseen atrial fibrillation records get a higher P(yes) than
    both sinus-rhythm records. (The greedy answer to these two unseen AF records is still "no": the model leans to
    "no"; docs/results/ecgqa_evidence.md measures it on 800 questions. A random model passes this by chance 1 in 6.)"""
    from ecgllm import read_ecg
    from ecgllm.evaluation.runner import ModelAnswerer, Prompt

    question = "Does this ECG show symptoms of atrial fibrillation?"
    answerer = ModelAnswerer(assistant.model, assistant.processor, batch_size=4, max_new_tokens=4)
    scored = answerer([Prompt(question, [read_ecg(p)], [""]) for p in AFIB + NORMAL])
    p_yes = [p for _, p in scored]
    assert min(p_yes[:2]) > max(p_yes[2:]), dict(zip(map(str, AFIB + NORMAL), p_yes))
    assert all(text.lower().startswith("no") for text, _ in scored[2:])  # sinus rhythm: no


def test_a_photo_of_a_printout_is_answered(assistant, tmp_path):
    from ecgllm import read_ecg
    from ecgllm.render import render_ecg

    if assistant.model.image_encoder is None:
        pytest.fail("the shipped checkpoint has no image encoder")
    photo = tmp_path / "photo.jpg"
    render_ecg(read_ecg(PTBXL_1), augment=True, seed=2).image.save(photo, quality=85)
    result = _ask("ask", str(photo), "Is this a normal ECG?", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    shown = json.loads(result.stdout)
    # an answer of ECG-QA's classes for this template, the Python API's, with the file read as a picture
    assert shown["text"].strip().lower() in {"yes", "no", "not sure"}, shown["text"]
    assert shown["text"] == assistant.ask(photo, "Is this a normal ECG?").text
    assert "image" in shown["measurements"][0]


def test_the_classifier_baseline_reads_the_checkpoints_own_encoder_and_head(assistant):
    """`EncoderFeatures` on a checkpoint: the frozen encoder the LLM reads and the head behind its label tokens,
    giving the probabilities the label tokens are built from (an AF record ranks AFIB above a normal one)."""
    import numpy as np
    import torch

    from ecgllm import read_ecg
    from ecgllm.evaluation.baselines import EncoderFeatures

    features = EncoderFeatures(SHIPPED_CHECKPOINT)
    ecgs = [read_ecg(p) for p in (*AFIB, *NORMAL)]
    probs = features.probabilities(features.embed(ecgs))
    afib = features.labels["all71"].index("AFIB")
    assert probs.shape == (4, 76) and probs[:2, afib].min() > probs[2:, afib].max()
    batch = assistant.processor([[{"role": "user", "content": "x"}]], [ecgs[:1]], train=False)
    with torch.no_grad():
        pooled = assistant.model.encoder.pool(assistant.model.encoder(batch["ecg"], batch["ecg_mask"]))
        expected = torch.sigmoid(assistant.model.label_tokens.head(pooled)).numpy()
    assert np.allclose(expected[0], probs[0], atol=1e-5)  # the same numbers the model's label tokens see


def test_a_batch_of_prompts_of_different_lengths_answers_as_each_alone(assistant):
    """Batching must not change an answer: prompts of different lengths (one and two ECGs, short and long
    questions) are padded after their shared prefix, which is cached once; each greedy answer and its P(yes) equal
    the question answered alone."""
    from ecgllm import read_ecg
    from ecgllm.evaluation.runner import ModelAnswerer, Prompt

    afib, normal = read_ecg(AFIB[0]), read_ecg(NORMAL[0])
    prompts = [Prompt("Is this a normal ECG?", [normal], [""]),
               Prompt("Does this ECG show symptoms of non-specific intraventricular conduction disturbance (block)?",
                      [afib], [""]),
               Prompt("Does ECG 2 show any symptoms that ECG 1 does not?", [normal, afib],
                      ["ECG 1 (earlier)", "ECG 2 (recent)"]),
               Prompt("Which rhythm does this ECG show?", [afib], [""])]
    batch = assistant.processor([[{"role": "user", "content": p.question}] for p in prompts],
                                [p.ecgs for p in prompts], tags=[p.tags for p in prompts], train=False)
    mask = batch["attention_mask"]
    assert (mask == 0).any() and bool(mask[:, 0].all())  # padded, but not at the left: the prefix stays aligned
    together = ModelAnswerer(assistant.model, assistant.processor, batch_size=4, max_new_tokens=8)(prompts)
    alone = [ModelAnswerer(assistant.model, assistant.processor, batch_size=1, max_new_tokens=8)([p])[0]
             for p in prompts]
    assert [t for t, _ in together] == [t for t, _ in alone]
    for (_, a), (_, b) in zip(together, alone):
        assert (a is None and b is None) or abs(a - b) < 1e-3


def test_two_first_runs_at_once_both_get_the_embedded_model(tmp_path):
    """Two processes converting the embedded SmolLM2 into the same empty cache (two training runs started
    together): each writes its own copy, one lands, both succeed and nothing half-written stays."""
    target = tmp_path / "llm" / "smollm2-135m-instruct"
    stale = tmp_path / "llm" / "smollm2-135m-instruct.partial-killed"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))  # a killed run's leftover, long ago
    live = tmp_path / "llm" / "smollm2-135m-instruct.partial-live"
    live.mkdir()  # another process's conversion under way: left alone
    code = "import sys; from pathlib import Path; from ecgllm.models.llm import convert_default_llm; " \
           "print(convert_default_llm(Path(sys.argv[1])))"
    runs = [subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert all(out.strip() == str(target) for out, _ in outputs)
    assert (target / "config.json").exists() and list(target.glob("*.safetensors"))
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name])  # stale one gone
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # as any folder this user makes, not private
