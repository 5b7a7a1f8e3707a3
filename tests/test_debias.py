"""Backdoor adjustment: severity strata, intervention sampling, IPW weights, the weighted loss, the estimators
through `ecgllm train`, and the removed stratified option refused with a sentence."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from ecgllm.datasets.debias import ipw_weights, question_prior_accuracy
from ecgllm.datasets.severity import count_stratum, most_severe, superclass_stratum
from ecgllm.training.model_setup import load_stage_weights
from tests.conftest import FIXTURES, PTBXL_1, SHARED, logged, make_training_workspace, needs_shared
from tests.tiny_models import tiny_llm

CLI = [sys.executable, "-m", "ecgllm.serving.cli"]


def test_strata_are_defined_from_labels():
    assert superclass_stratum(["NORM"]) == "normal"
    assert superclass_stratum(["MI"]) == "one abnormal" == superclass_stratum(["NORM", "CD"])
    assert superclass_stratum(["MI", "STTC"]) == "several abnormal"
    assert superclass_stratum([]) == "no diagnostic label"
    assert count_stratum(["SR", "NORM"]) == "0" and count_stratum(["AFIB", "IMI", "LVH", "PVC"]) == "3+"
    assert most_severe(["normal", "several abnormal"]) == "several abnormal"


def test_ipw_weights_undo_the_question_stratum_dependence():
    # question "a" is asked mostly of sick records, "b" mostly of healthy ones
    questions = ["a"] * 8 + ["a"] * 2 + ["b"] * 2 + ["b"] * 8
    strata = ["sick"] * 8 + ["healthy"] * 2 + ["sick"] * 2 + ["healthy"] * 8
    w = ipw_weights(questions, strata, smoothing=0.0)
    # weighted, each question sees the strata at their marginal P(s) = 1/2
    for q in ("a", "b"):
        rows = [i for i, x in enumerate(questions) if x == q]
        sick = sum(w[i] for i in rows if strata[i] == "sick")
        assert sick / sum(w[i] for i in rows) == pytest.approx(0.5)
    assert w.mean() == pytest.approx(1.0)
    assert question_prior_accuracy(["q"] * 100, ["yes"] * 100) == 1.0


@needs_shared
def test_intervention_sampling_cuts_the_stratum_question_link():
    from sklearn.metrics import adjusted_mutual_info_score

    from ecgllm.datasets import PTBXL
    from ecgllm.datasets.ecgqa import ECGQA
    from ecgllm.datasets.ecgqa_attributes import build_attributes
    from ecgllm.datasets.ecgqa_generator import ECGQAGenerator
    from ecgllm.datasets.severity import strata_for

    ptbxl = PTBXL.load(SHARED / "ptbxl")
    pool = sorted(ECGQA(SHARED / "ecgqa/ecgqa").split_ecg_ids("train"))[:3000]
    strata = strata_for(ptbxl, pool)
    generator = ECGQAGenerator(build_attributes(ptbxl), pool, strata=strata)
    single = [t for t, tpl in generator.templates.items() if tpl.question_type.startswith("single")]

    def ami(samples):
        return adjusted_mutual_info_score([strata[s["ecg_id"][0]] for s in samples],
                                          [f"{s['template_id']}|{s['question']}" for s in samples])

    vanilla = generator.generate(3000, seed=1, template_ids=single)
    intervened = generator.generate(3000, seed=1, template_ids=single, intervention=True)
    assert ami(intervened) < 0.5 * ami(vanilla)
    assert {s["sampling"] for s in intervened} == {"intervention"} and {s["sampling"] for s in vanilla} == {"observational"}
    with pytest.raises(ValueError, match="strata"):
        ECGQAGenerator(build_attributes(ptbxl), pool).generate(5, intervention=True)
    with pytest.raises(ValueError, match="cannot be combined"):  # a partner chosen for its answer re-links Q and S
        generator.generate(4, intervention=True, paired=True)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from ecgllm.models import EcgLMConfig, ProcessorConfig
    from ecgllm.training.model_setup import build_model

    tokenizer = copy.deepcopy(tiny_tokenizer)
    config = EcgLMConfig(llm="tiny", encoder_kwargs={"widths": [8, 16], "n_tokens": 2}, lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})
    torch.manual_seed(0)
    return build_model(config, ProcessorConfig(), llm=tiny_llm(len(tokenizer)), tokenizer=tokenizer)


def _batch(processor, train: bool):
    from ecgllm import read_ecg

    ecg = read_ecg(PTBXL_1)
    turns = [[{"role": "user", "content": "Does this ECG show atrial fibrillation?"},
              {"role": "assistant", "content": "no"}][: 2 if train else 1]] * 2
    return processor(turns, [[ecg], [ecg]], train=train)


def test_uniform_weights_give_the_plain_loss_and_weights_matter(tiny_model):
    model, processor = tiny_model
    model.eval()
    batch = _batch(processor, train=True)
    plain = model(**batch).loss
    weighted = model(**batch, sample_weight=torch.ones(2)).loss
    assert torch.allclose(plain, weighted, atol=1e-5)
    assert torch.allclose(model(**batch, sample_weight=torch.tensor([3.0, 3.0])).loss, plain, atol=1e-5)



@pytest.mark.parametrize("sparse", [True, False])
def test_ipw_with_equal_weights_is_the_vanilla_loss_when_answers_differ_in_length(tiny_model, sparse):
    """One normalisation for every arm: all weights 1 (or any constant) reproduce the vanilla loss exactly, also
    when conversations have answers of different lengths (a mean of per-sample means would not)."""
    from ecgllm import read_ecg

    model, processor = tiny_model
    model.eval()
    model.sparse_logits = sparse
    ecg = read_ecg(PTBXL_1)
    turns = [[{"role": "user", "content": "Which rhythm does this ECG show?"}, {"role": "assistant", "content": answer}]
             for answer in ("no", "sinus rhythm, atrial fibrillation and sinus tachycardia")]
    batch = processor(turns, [[ecg], [ecg]], train=True)
    try:
        plain = model(**batch).loss
        for constant in (1.0, 2.5):
            weighted = model(**batch, sample_weight=torch.full((2,), constant)).loss
            assert torch.allclose(weighted, plain, atol=1e-6)
        only_long = model(**batch, sample_weight=torch.tensor([0.0, 1.0])).loss
        alone = model(**processor(turns[1:], [[ecg]], train=True)).loss
        assert torch.allclose(only_long, alone, atol=1e-5)  # a weight of 0 removes a conversation
        assert not torch.allclose(model(**batch, sample_weight=torch.tensor([1.0, 3.0])).loss, plain, atol=1e-4)
    finally:
        model.sparse_logits = True


@pytest.fixture(scope="module")
def debias_workspace(tmp_path_factory, tiny_tokenizer):
    root = make_training_workspace(tmp_path_factory.mktemp("debias"), tiny_tokenizer, n_conversations=24)
    result = subprocess.run(CLI + ["data", "debias", str(root / "train.jsonl"), "--ptbxl", str(FIXTURES / "ptbxl"),
                                   "-o", str(root / "train_debiased.jsonl")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root


def test_debiased_training_runs_saves_and_chains(debias_workspace):
    root, method = debias_workspace, "ipw"
    row = json.loads((root / "train_debiased.jsonl").read_text().splitlines()[0])
    assert {"strata", "stratum", "ipw_weight"} <= set(row["meta"])
    base = {"stage": "debiased_pretraining", "data": {"train": str(root / "train_debiased.jsonl"),
                                                       "ecg_cache": str(root / "cache")},
            "model": {"llm": str(root / "tiny-llm"), "encoder_kwargs": {"widths": [8, 16], "n_tokens": 2},
                      "lora": {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj"]}},
            "prep": {"fs": 100.0, "normalize": "zscore"}, "optim": {"batch_size": 4, "max_steps": 3},
            "save_every": 3, "log_every": 1, "debias": method}
    first = dict(base, output_dir=str(root / f"{method}-1"))
    (root / f"{method}-1.yaml").write_text(yaml.safe_dump(first))
    result = subprocess.run(CLI + ["train", str(root / f"{method}-1.yaml"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    # the next stage starts from this one's weights
    second = dict(base, output_dir=str(root / f"{method}-2"), init_from=str(root / f"{method}-1/final"),
                  debias="none")
    second["optim"] = {"batch_size": 4, "max_steps": 1, "lr": 0.0}
    (root / f"{method}-2.yaml").write_text(yaml.safe_dump(second))
    result = subprocess.run(CLI + ["train", str(root / f"{method}-2.yaml"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    from ecgllm.models.model_folder import part_state

    a = part_state(root / f"{method}-1/final", "projector")
    b = part_state(root / f"{method}-2/final", "projector")
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the chained stage kept the first stage's weights
    assert np.isfinite([m["loss"] for m in logged(root / f"{method}-1")]).all()


@pytest.mark.parametrize("method, missing", [("ipw", "meta.ipw_weight"), ("intervention", "--intervention")])
def test_debiased_training_refuses_data_the_estimator_cannot_use(debias_workspace, method, missing):
    """IPW: a conversation without meta.ipw_weight is not one of weight 1. Intervention: the loop is plain, what
    makes it an estimator is data drawn by intervention (meta.sampling). Either way the run stops before training
    (exit 3) with a count and the first offending line."""
    root = debias_workspace
    recipe = {"stage": "debiased_pretraining", "output_dir": str(root / f"{method}-refused"),
              "data": {"train": str(root / "train.jsonl"), "ecg_cache": str(root / "cache")},
              "model": {"llm": str(root / "tiny-llm"), "encoder_kwargs": {"widths": [8, 16], "n_tokens": 2}},
              "optim": {"batch_size": 4, "max_steps": 1}, "debias": method}
    (root / f"{method}-refused.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run(CLI + ["train", str(root / f"{method}-refused.yaml"), "--quiet"], capture_output=True,
                            text=True)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "24 of 24 conversations" in result.stderr and missing in result.stderr
    assert "the first is line 1" in result.stderr
    assert not (root / f"{method}-refused" / "checkpoints").exists()
    # a blank line and two usable rows first: the sentence names the file's line of the first unusable row
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines() if line.strip()]
    for row in rows[:2]:
        row.setdefault("meta", {}).update(sampling="intervention", ipw_weight=1.0)
    mixed = root / f"{method}-mixed.jsonl"
    mixed.write_text("\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    recipe["data"]["train"], recipe["output_dir"] = str(mixed), str(root / f"{method}-mixed")
    (root / f"{method}-mixed.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run(CLI + ["train", str(root / f"{method}-mixed.yaml"), "--quiet"], capture_output=True,
                            text=True)
    assert result.returncode == 3 and "22 of 24 conversations" in result.stderr, result.stderr[-2000:]
    assert "the first is line 4" in result.stderr


def test_the_removed_stratified_option_is_refused_with_a_sentence(debias_workspace, tiny_model, tmp_path):
    """`stratified` fed the true stratum (a function of the answers' labels) as an input: a recipe asking for it
    stops before training (exit 3) and says why; a model folder trained with it is refused on loading, while
    folders that only carry the removed keys at their "off" value (the shipped one) still load."""
    from ecgllm.errors import InputError
    from ecgllm.models.encoder_source import encoder_meta
    from ecgllm.models.removed_features import RemovedFeatureError, without_removed_keys

    root = debias_workspace
    recipe = {"stage": "debiased_pretraining", "output_dir": str(root / "stratified"),
              "data": {"train": str(root / "train_debiased.jsonl"), "ecg_cache": str(root / "cache")},
              "model": {"llm": str(root / "tiny-llm"), "encoder_kwargs": {"widths": [8, 16], "n_tokens": 2}},
              "optim": {"batch_size": 4, "max_steps": 1}, "debias": "stratified"}
    (tmp_path / "stratified.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run(CLI + ["train", str(tmp_path / "stratified.yaml"), "--quiet"], capture_output=True,
                            text=True)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "'stratified' was removed" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "stratified").exists()
    assert without_removed_keys({"label_tokens": 6, "n_strata": 0, "stratum_prior": []}, "x") == {"label_tokens": 6}
    with pytest.raises(RemovedFeatureError, match="x: this model was trained with the stratified de-biasing"):
        without_removed_keys({"n_strata": 4, "stratum_prior": [0.25] * 4}, "x")
    assert issubclass(RemovedFeatureError, InputError)  # the CLI's exit 3 with the sentence, not an internal error
    # its weights may neither seed a new stage (init_from) nor teach an encoder (encoder_init, image teacher)
    model, processor = tiny_model
    folder = model.save_pretrained(tmp_path / "old-stratified", processor)
    meta = json.loads((folder / "config.json").read_text())
    meta["model"].update(n_strata=4, stratum_prior=[0.25] * 4)
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(RemovedFeatureError, match="old-stratified"):
        load_stage_weights(model, folder, processor)
    with pytest.raises(RemovedFeatureError, match="old-stratified"):
        encoder_meta(folder)


def test_the_strata_page_counts_p_yes_per_template_and_stratum(monkeypatch):
    """benchmarks/strata.py: P(yes | template, stratum) from the answers, the prompt stratum of two ECGs the more
    severe one, and a cell of too few questions left blank rather than shown."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import strata

    monkeypatch.setattr(strata, "MIN_CELL", 2)
    records = {1: "normal", 2: "normal", 3: "one abnormal", 4: "several abnormal"}

    def sample(ecgs, answer, template=2):
        return {"ecg_id": ecgs, "template_id": template, "answer": [answer], "question": f"q{template}"}

    samples = [sample([1], "yes"), sample([2], "no"), sample([3], "no"), sample([3], "no"), sample([4], "no"),
               sample([1, 4], "yes", template=44)]
    m = strata.measure(samples, records, templates=[2])
    cells = m["single_verify"]["2"]["by_stratum"]
    assert cells["normal"] == {"n": 2, "p_yes": 0.5} and cells["one abnormal"] == {"n": 2, "p_yes": 0.0}
    assert cells["several abnormal"] == {"n": 1, "p_yes": None}  # one question: blank
    assert m["single_verify"]["2"]["p_yes"] == 0.2 and m["single_verify"]["2"]["range"] == 0.5
    assert m["stratum_share"] == {"normal": 0.3333, "one abnormal": 0.3333, "several abnormal": 0.3333}


def test_the_shipping_is_decided_again_only_on_the_arms_valid_questions(tmp_path, monkeypatch):
    """benchmarks/debias_experiment.py --update-shipping: today's default is compared with the recorded arms only when
    the default they were compared with, scored again, reproduces its recorded EM on the first n valid questions,
    and today's run answered the same questions; an arm ships only when it beats today's EM by the tolerance."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import debias_experiment

    def run(name: str, correct: list[bool], gold: str = "yes") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        rows = ["sample_id,ecg_id,template_id,gold,correct"] + [
            f"{i},{100 + i},2,{gold},{c}" for i, c in enumerate(correct)]
        (folder / "per_sample.csv").write_text("\n".join(rows) + "\n")
        (folder / "metrics.json").write_text(json.dumps({"run": {"model": f"runs/{name}/final"}}))
        return folder

    recorded = {"shipped_arm": None, "shipping": {
        "best_arm_by_valid": "ipw", "best_arm_valid_em": 0.75, "shipped_model_valid_em": 0.5, "valid_questions": 4,
        "tied_with": [], "decision": "..."}}
    earlier = run("earlier", [True, False, True, False, True, True])       # first 4: EM 0.5, as recorded
    weaker = run("weaker", [True, False, False, False, True, True])        # first 4: EM 0.25
    stronger = run("stronger", [True, True, True, False, False, False])    # first 4: EM 0.75

    updated = debias_experiment.update_shipping(copy.deepcopy(recorded), earlier, weaker)
    assert updated["shipped_arm"] == "ipw" and updated["shipping"]["shipped_model_valid_em"] == 0.25
    assert "replaces it" in updated["shipping"]["decision"] and "runs/weaker/final" in updated["shipping"]["compared_model"]
    kept = debias_experiment.update_shipping(copy.deepcopy(recorded), earlier, stronger)
    assert kept["shipped_arm"] is None and "stays as it is" in kept["shipping"]["decision"]
    with pytest.raises(SystemExit, match="not the same questions"):   # the earlier default does not reproduce 0.5
        debias_experiment.update_shipping(copy.deepcopy(recorded), stronger, weaker)
    other = run("other", [True, False, False, False], gold="no")
    with pytest.raises(SystemExit, match="did not answer the valid questions"):
        debias_experiment.update_shipping(copy.deepcopy(recorded), earlier, other)
    # Chained: the next default is compared against the last one compared (stronger, 0.75), by name and EM; running
    # the same update again is recognised by today's model name, even when two defaults answer alike
    later = run("later", [True, True, True, False, True, True])            # first 4: EM 0.75, like stronger
    chained = debias_experiment.update_shipping(copy.deepcopy(kept), stronger, later)
    assert "runs/later/final" in chained["shipping"]["compared_model"]
    assert chained["shipping"]["earlier_comparison"] == {"model": "`runs/stronger/final`", "valid_em": 0.75}
    again = debias_experiment.update_shipping(copy.deepcopy(chained), stronger, later)
    assert again["shipping"] == chained["shipping"]
    with pytest.raises(SystemExit, match="not the same questions"):  # the default from two updates back is refused
        debias_experiment.update_shipping(copy.deepcopy(chained), earlier, weaker)


def test_the_arms_stand_for_a_default_only_with_their_encoder_and_head(tmp_path, monkeypatch):
    from pathlib import Path

    from safetensors.torch import save_file

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import debias_experiment

    def folder(name: str, encoder: float, head: float, other: float, fs: float = 100.0) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "encoder_config.json").write_text(json.dumps(
            {"encoder": "resnet1d", "encoder_kwargs": {"widths": [2]}, "input": {"normalize": "mv", "fs": fs}}))
        save_file({"conv.weight": torch.full((2, 2), encoder)}, tmp_path / name / "encoder.safetensors")
        save_file({"weight": torch.full((3, 2), head)}, tmp_path / name / "head.safetensors")
        save_file({"weight": torch.full((2, 1), other)}, tmp_path / name / "projector.safetensors")  # LLM side
        return tmp_path / name

    start = folder("start", 1.0, 2.0, 0.0)
    assert debias_experiment.same_encoder_and_head(start, folder("later", 1.0, 2.0, 5.0))  # LLM-side weights moved
    assert not debias_experiment.same_encoder_and_head(start, folder("new_head", 1.0, 2.5, 0.0))
    assert not debias_experiment.same_encoder_and_head(start, folder("new_encoder", 1.5, 2.0, 0.0))
    assert not debias_experiment.same_encoder_and_head(start, folder("new_rate", 1.0, 2.0, 0.0, fs=500.0))


def test_one_command_per_arm_plans_every_step_the_experiment_reads_and_skips_what_is_done(tmp_path, monkeypatch):
    """benchmarks/debias_arm.py: the arm's data (ipw reweights vanilla's), the start, then per seed training and
    the five evaluations `debias_experiment.py` reads; a finished step is skipped, a half-written data file is not
    taken for done."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import debias_arm
    import debias_experiment

    steps = debias_arm.plan("ipw", [1, 2])
    outputs = [done for done, _ in steps]
    assert outputs.index("runs/debias/data/vanilla.jsonl") < outputs.index("runs/debias/data/ipw.jsonl")
    for seed in (1, 2):
        evaluated = {Path(o).parent.name for o in outputs if o.startswith(f"runs/debias/eval/ipw-{seed}/")}
        assert evaluated == set(debias_experiment.SETS)
        assert f"runs/debias/ipw-{seed}/final/training_records.json" in outputs
    train = next(c for d, c in steps if d.endswith("ipw-1/final/training_records.json"))
    assert train[:2] == ["train", str(debias_arm.CHECKOUT / "recipes/debias/ipw.yaml")] and "1" in train
    valid = next(c for d, c in steps if d == "monitor/valid_gen.json")
    assert "--template-ids" in valid and "20" not in valid and "--out" in valid
    assert Path(valid[valid.index("--out") + 1]).name.startswith(".partial-")  # renamed only when complete
    assert [d for d, _ in debias_arm.plan("intervention", [1])][0] == "runs/debias/data/intervention.jsonl"

    monkeypatch.chdir(tmp_path)
    for done in outputs[:3]:
        Path(done).parent.mkdir(parents=True, exist_ok=True)
        Path(done).write_text("{}")
    monkeypatch.setattr("sys.argv", ["debias_arm.py", "ipw", "--seeds", "1", "--dry-run"])
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        debias_arm.main()
    lines = printed.getvalue().splitlines()
    assert len(lines) == len(debias_arm.plan("ipw", [1])) - 3 and "vanilla.jsonl" not in lines[0]
