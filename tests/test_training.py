"""Training on Accelerate: a tiny recipe end to end, SIGKILL + resume with bit-identical weights, and two
CPU processes (gloo) through torchrun."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ecgllm.models.model_folder import saved_weights
from ecgllm.training.config import RecipeError, load_recipe
from ecgllm.training.llm_stage import lr_factor
from tests.conftest import KILL_SEED, kill_once_written, logged, make_training_workspace

CLI = [sys.executable, "-m", "ecgllm.serving.cli"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_tokenizer):
    return make_training_workspace(tmp_path_factory.mktemp("train"), tiny_tokenizer)


def recipe(workspace: Path, name: str, lora_dropout: float = 0.0, **optim) -> Path:
    data = {
        "stage": "instruction", "output_dir": str(workspace / name),
        "data": {"train": str(workspace / "train.jsonl"), "ecg_cache": str(workspace / "cache")},
        "model": {"llm": str(workspace / "tiny-llm"), "encoder": "resnet1d",
                  "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4}, "llm_policy": "lora",
                  "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": lora_dropout,
                           "target_modules": ["q_proj", "v_proj"]}},
        "prep": {"fs": 100.0, "normalize": "zscore", "window_s": 10.0},
        "optim": {"lr": 0.001, "batch_size": 4, "grad_accum": 2, "max_steps": 12, **optim},
        "seed": 0, "save_every": 2, "log_every": 1,
    }
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def final_weights(run: Path) -> dict:
    return model_weights(run / "final")


def model_weights(final: Path) -> dict:
    return saved_weights(final)


def test_recipe_trains_logs_and_saves(workspace):
    result = subprocess.run(CLI + ["train", str(recipe(workspace, "basic", lr=0.01)), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    run = workspace / "basic"
    metrics = logged(run)
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[-1]["loss"] < metrics[0]["loss"]  # it learns something
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000010", "step-00000012"]
    from ecgllm.models import EcgLanguageModel, EcgProcessor

    model = EcgLanguageModel.from_pretrained(run / "final")
    processor = EcgProcessor.from_pretrained(run / "final")
    assert processor.prep.normalize == "zscore" and model.encoder.n_tokens == 4
    from ecgllm.datasets.split_policy import load_policy
    from ecgllm.models.card import file_sha256, read_card

    card = read_card(run / "final")  # what the weights expect and where they come from
    assert card.kind == "language_model" and card.prep["normalize"] == "zscore"
    assert card.provenance.recipe == json.loads((run / "recipe.json").read_text())
    assert card.provenance.split_policy_sha256 == load_policy().sha256
    assert card.provenance.training_records_sha256 == file_sha256(run / "final" / "training_records.json")
    train_file = Path(card.provenance.recipe["data"]["train"])
    assert card.provenance.data_sha256[train_file.name] == file_sha256(train_file)
    assert {"index.csv", "meta.json"} <= set(card.provenance.data_sha256)
    assert card.provenance.git_commit is None or len(card.provenance.git_commit.split("+")[0]) == 40


def test_an_intermediate_checkpoint_exports_to_a_model_folder(workspace):
    basic = recipe(workspace, "basic", lr=0.01)
    if not (workspace / "basic" / "final").exists():  # this test alone: train the run the one above trains
        assert subprocess.run(CLI + ["train", str(basic), "--quiet"]).returncode == 0
    for step in (10, 12):
        result = subprocess.run(CLI + ["train", str(basic), "--export-step", str(step)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (workspace / "basic" / f"step-{step}" / "training_records.json").exists()
    final = final_weights(workspace / "basic")
    exported_last = model_weights(workspace / "basic" / "step-12")
    exported_earlier = model_weights(workspace / "basic" / "step-10")
    assert exported_last.keys() == final.keys() and all((exported_last[k] == final[k]).all() for k in final)
    assert any(not (exported_earlier[k] == final[k]).all() for k in final)  # step 10 is not the final model
    from ecgllm.serving.assistant import model_identity

    # servers name each folder after its run, never by its path
    assert model_identity(workspace / "basic" / "final")[0] == "basic"
    assert model_identity(workspace / "basic" / "step-10")[0] == "basic/step-10"
    missing = subprocess.run(CLI + ["train", str(basic), "--export-step", "5"], capture_output=True, text=True)
    assert missing.returncode == 3 and "no finished checkpoint of step 5; there are: 10, 12" in missing.stderr


def test_sigkill_then_resume_gives_bit_identical_weights(workspace, monkeypatch):
    # a CPU property: GPU kernels need not repeat their sums bit for bit (on an H200 the two runs' weights differed)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # LoRA dropout on: the resumed run must replay the killed run's dropout masks too (the RNG states resume)
    clean = recipe(workspace, "clean", lora_dropout=0.2, max_steps=30)
    assert subprocess.run(CLI + ["train", str(clean), "--quiet"], capture_output=True).returncode == 0
    killed = recipe(workspace, "killed", lora_dropout=0.2, max_steps=30)
    kill_at = random.Random(KILL_SEED).randrange(4, 20, 2)  # a checkpointed step
    kill_once_written(CLI + ["train", str(killed), "--quiet"],
                      workspace / "killed" / "checkpoints" / f"step-{kill_at:08d}", f"at step {kill_at}", 120)
    assert not (workspace / "killed" / "final").exists()
    with (workspace / "killed/metrics.jsonl").open("a") as fh:  # as if it had logged past its checkpoint
        fh.write(json.dumps({"step": kill_at + 1, "loss": -1.0}) + "\n")
    resumed = subprocess.run(CLI + ["train", str(killed), "--quiet"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    a, b = final_weights(workspace / "clean"), final_weights(workspace / "killed")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # each step logged once, with the clean run's loss: the line logged after the checkpoint was dropped
    resumed, clean_logged = logged(workspace / "killed"), logged(workspace / "clean")
    assert [m["step"] for m in resumed] == list(range(1, 31))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in clean_logged]


def test_two_cpu_processes_with_gloo(workspace):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # CPU processes on a GPU machine too
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ecgllm.serving.cli", "train",
                             str(recipe(workspace, "ddp", max_steps=4)), "--quiet"], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("lora_" in key for key in saved_weights(workspace / "ddp" / "final"))  # the adapter was saved
    entries = logged(workspace / "ddp")
    assert [m["step"] for m in entries] == [1, 2, 3, 4]  # logged once, by rank 0
    optim = load_recipe(workspace / "ddp.yaml").optim  # the schedule counts optimizer steps, not processes' steps
    assert [m["lr"] for m in entries] == pytest.approx([optim.lr * lr_factor(m["step"], optim.warmup_steps, 4)
                                                        for m in entries])
    export = subprocess.run(CLI + ["train", str(workspace / "ddp.yaml"), "--export-step", "4"], capture_output=True,
                            text=True)  # a multi-process run's checkpoint holds the wrapped model's names
    assert export.returncode == 0, export.stderr[-2000:]
    final, exported = final_weights(workspace / "ddp"), model_weights(workspace / "ddp" / "step-4")
    assert final.keys() == exported.keys() and all((final[k] == exported[k]).all() for k in final)
    # the recipe's batch is the whole batch, shared out: one row cannot feed two processes
    small = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ecgllm.serving.cli", "train",
                            str(recipe(workspace, "ddp_small", max_steps=2, batch_size=1, grad_accum=1)), "--quiet"],
                           capture_output=True, text=True, env=env, timeout=600)
    # (each process stops with exit 3 and the sentence; torchrun itself reports the failed processes with 1)
    assert small.returncode != 0 and "shared out among the 2 processes" in small.stderr, small.stderr[-2000:]
    assert "exitcode  : 3" in small.stderr or "exitcode: 3" in small.stderr, small.stderr[-2000:]


def test_recipe_errors_name_the_problem(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("stage: x\noutput_dir: o\ndata: {train: t.jsonl}\noptim: {learning_rate: 1}\n")
    with pytest.raises(RecipeError, match="unknown key optim.learning_rate; allowed here: batch_size"):
        load_recipe(bad)
    bad.write_text("stage: x\ndata: {train: t.jsonl}\n")
    with pytest.raises(RecipeError, match="missing required key 'output_dir'"):
        load_recipe(bad)
    bad.write_text("stage: x\noutput_dir: o\ndata: {train: t.jsonl}\nmodel: {llm_policy: half}\n")
    with pytest.raises(RecipeError, match="llm_policy"):
        load_recipe(bad)
    assert load_recipe(Path(__file__).parents[1] / "recipes/instruct_tiny.yaml").model.llm_policy == "lora"


def test_recipe_values_are_typed_and_any_key_can_be_overridden(tmp_path):
    """YAML 1.1 reads 2e-4 as a string: it must still train at 0.0002; wrong types name their dotted key;
    ``--section.key value`` overrides reach nested keys and are typed like the file's values."""
    from ecgllm.serving.cli import recipe_overrides

    path = tmp_path / "r.yaml"
    path.write_text("stage: instruction\noutput_dir: o\ndata: {train: t.jsonl}\noptim: {lr: 2e-4, max_steps: 10}\n")
    config = load_recipe(path)
    assert config.optim.lr == 0.0002 and isinstance(config.optim.lr, float)
    overrides = recipe_overrides(["--optim.lr", "1e-4", "--model.label_tokens=3", "--prep.bandpass", "[1, 30]"])
    assert overrides == ["optim.lr=1e-4", "model.label_tokens=3", "prep.bandpass=[1, 30]"]
    config = load_recipe(path, overrides)
    assert (config.optim.lr, config.model.label_tokens, config.prep.bandpass) == (0.0001, 3, (1.0, 30.0))
    assert config.optim.max_steps == 10  # the rest of the section is kept
    config = load_recipe(path, ["model.lora.r=8", "mixed_precision=no", "output_dir=2024"])
    assert config.model.lora["r"] == 8 and config.model.lora["target_modules"]  # the default section, one key changed
    assert (config.mixed_precision, config.output_dir) == ("no", "2024")  # text stays text ("no" is not false)
    with pytest.raises(RecipeError, match="prep.crop 'random' is for encoder pretraining"):
        load_recipe(path, ["prep.crop=random"])  # nothing would seed it
    for override, message in (("optim.lr=fast", "optim.lr: Input should be a valid number"),
                              ("optim.batch_size=8.5", "optim.batch_size: Input should be a valid integer"),
                              ("model.wings=2", "unknown key model.wings"),
                              ("seed=[1]", "seed: Input should be a valid integer")):
        with pytest.raises(RecipeError, match=message):
            load_recipe(path, [override])
    with pytest.raises(RecipeError, match="recipe overrides are --KEY VALUE"):
        recipe_overrides(["optim.lr=1"])
    with pytest.raises(RecipeError, match="has no value"):
        recipe_overrides(["--optim.lr"])


def test_a_run_resumes_only_under_the_recipe_it_started_with(workspace):
    """A changed schedule would silently bend the run's learning-rate curve: stop with the differences, exit 3;
    ``--resume-anyway`` continues; an unchanged recipe resumes; overrides are saved in recipe.json."""
    run = recipe(workspace, "changed", max_steps=2)
    first = subprocess.run(CLI + ["train", str(run), "--quiet", "--optim.lr", "0.002"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((workspace / "changed" / "recipe.json").read_text())["optim"]["lr"] == 0.002
    longer = ["--optim.lr", "0.002", "--optim.max_steps", "4"]
    refused = subprocess.run(CLI + ["train", str(run), "--quiet", *longer], capture_output=True, text=True)
    assert refused.returncode == 3, refused.stderr[-2000:]
    assert "optim.max_steps: 2 -> 4" in refused.stderr and "--resume-anyway" in refused.stderr
    assert not (workspace / "changed" / "checkpoints" / "step-00000004").exists()
    forced = subprocess.run(CLI + ["train", str(run), "--quiet", *longer, "--resume-anyway"], capture_output=True,
                            text=True)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads((workspace / "changed" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    same = subprocess.run(CLI + ["train", str(run), "--quiet", *longer], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr[-2000:]
    saved = json.loads((workspace / "changed" / "recipe.json").read_text())
    del saved["model"]["named_label_tokens"]  # a run saved before a key existed resumes: it is the default
    saved["optim"]["lr"] = "0.002"  # and a number YAML 1.1 kept as text is that number
    (workspace / "changed" / "recipe.json").write_text(json.dumps(saved))
    older = subprocess.run(CLI + ["train", str(run), "--quiet", *longer], capture_output=True, text=True)
    assert older.returncode == 0, older.stderr[-2000:]


ENCODER_STAGES = ("encoder_pretraining", "encoder_contrastive", "image_distillation")


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_reads(recipe):
    from ecgllm.training.config import load_encoder_recipe
    from ecgllm.training.recipes import recipe_stage

    import yaml

    from ecgllm.training.recipes import resolved

    config = load_encoder_recipe(recipe) if recipe_stage(recipe) in ENCODER_STAGES else load_recipe(recipe)
    written, loaded = yaml.safe_load(recipe.read_text()), resolved(config)

    def arrives(key: str, value, got) -> None:  # every value the recipe writes is in the typed config, as written
        if isinstance(value, dict):
            assert isinstance(got, dict), f"{recipe.name}: {key} is {got!r}"
            for inner, item in value.items():
                assert inner in got, f"{recipe.name}: {key}.{inner} did not reach the config"
                arrives(f"{key}.{inner}", item, got[inner])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            assert isinstance(got, (int, float)) and not isinstance(got, bool) and got == value, \
                f"{recipe.name}: {key} {value!r} became {got!r}"
        elif isinstance(value, str) and isinstance(got, float):  # YAML 1.1 reads 2e-4 as text; the recipe types it
            assert float(value) == got, f"{recipe.name}: {key} {value!r} became {got!r}"
        elif isinstance(value, (list, tuple)):
            assert list(got) == list(value), f"{recipe.name}: {key} {value!r} became {got!r}"
        else:
            assert got == value, f"{recipe.name}: {key} {value!r} became {got!r}"

    for key, value in written.items():
        if key != "stage":
            assert key in loaded, f"{recipe.name}: {key} did not reach the config"
            arrives(key, value, loaded[key])


RECIPES = Path(__file__).parents[1] / "recipes"
STARTS = ("init_from", "encoder_init", "init_encoder", "teacher", "init_student", "image_encoder_init")


def _start_runs(recipe: dict):
    """The runs a recipe starts from: (dotted key, path) of every start key, nested or not."""
    for key, value in recipe.items():
        if isinstance(value, dict):
            yield from ((f"{key}.{inner}", path) for inner, path in _start_runs(value))
        elif key in STARTS and value:
            yield key, str(value)


def _comments(recipe: Path, depth: int = 3) -> str:
    """A recipe's comment lines, and those of the recipes they name ("see recipes/ecgqa/X.yaml"), a few levels."""
    text = "\n".join(line for line in recipe.read_text().splitlines() if line.lstrip().startswith("#"))
    if depth:
        for named in sorted(set(re.findall(r"recipes/[\w/]+\.yaml", text))):
            if (RECIPES.parent / named).exists() and RECIPES.parent / named != recipe:
                text += "\n" + _comments(RECIPES.parent / named, depth - 1)
    return text


def test_no_two_recipes_write_the_same_run_and_every_start_is_made_or_explained():
    """A run a recipe starts from is another shipped recipe's output (its folder, final model or a checkpoint), or
    the recipe's comments (or those of a recipe they name) say where it comes from, e.g. a default restored from git."""
    recipes = {path: yaml.safe_load(path.read_text()) for path in sorted(RECIPES.rglob("*.yaml"))}
    outputs = {path: os.path.normpath(recipe["output_dir"]) for path, recipe in recipes.items()}
    for path, out in outputs.items():
        clashes = [other.name for other, theirs in outputs.items()
                   if other != path and (theirs == out or theirs.startswith(out + "/"))]
        assert not clashes, f"{path.name} writes {out}, as do (or inside it) {clashes}"

    def made_or_explained(path: Path, start: str) -> bool:
        start = os.path.normpath(start)
        made = any(start == out or start.startswith(out + "/") for other, out in outputs.items() if other != path)
        base = start.removesuffix("/final")
        return made or re.search(rf"{re.escape(base)}(?![\w/-])", _comments(path)) is not None

    unexplained = [f"{path.name}: {key} = {start}" for path, recipe in recipes.items()
                   for key, start in _start_runs(recipe) if not made_or_explained(path, start)]
    assert not unexplained, unexplained


def test_encoder_recipe_starts_from_a_contrastive_run_of_the_same_encoder():
    from ecgllm.training.config import load_encoder_recipe

    recipes = Path(__file__).parents[1] / "recipes"
    encoder = load_encoder_recipe(recipes / "encoder_ptbxl.yaml")
    contrastive = load_encoder_recipe(recipes / "encoder_contrastive.yaml")
    assert encoder.init_encoder == contrastive.output_dir
    assert (encoder.encoder, encoder.encoder_kwargs, encoder.normalize) == \
        (contrastive.encoder, contrastive.encoder_kwargs, contrastive.normalize)
