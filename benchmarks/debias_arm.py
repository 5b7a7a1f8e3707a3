"""One arm of the de-biasing experiment, from data to answers, in one command that resumes.

    python CHECKOUT/benchmarks/debias_arm.py ARM [--seeds 1 2 3] [--core 0] [--dry-run]

Run from the folder that holds runs/, cache/ and monitor/ (beside shared/; `cache/ptbxl100` from
`ecgllm data prepare ptbxl`). Each step is skipped when its output is complete, and training and evaluation
resume where a killed run stopped, so the same command finishes the arm across sessions:

1. the data the arm trains on (`recipes/debias/ARM.yaml`'s header: 2,000 template-worded questions over ECG-QA
   train ECGs, generator seed 11; `intervention` draws its own, `ipw` reweights vanilla's), the test questions over
   ECG-QA test ECGs in template and paraphrased wording, and the valid questions of model selection;
2. the model every arm starts from (its encoder and classifier head only: `encoder_init`), taken from git;
3. per seed: `ecgllm train recipes/debias/ARM.yaml --seed S --output_dir runs/debias/ARM-S`, one pinned core;
4. per seed, the five evaluations `benchmarks/debias_experiment.py` reads (runs/debias/eval/ARM-S/...).

When every arm is done: `python CHECKOUT/benchmarks/debias_experiment.py --runs runs/debias --shipped-valid
monitor/NAME-none` (an `ecgllm eval ecgqa` run of the default on monitor/valid_gen.json).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from ecgqa_selection import SELECTION_TEMPLATES  # the model-selection set's templates

CHECKOUT = Path(__file__).resolve().parents[1]
ARMS = ("vanilla", "intervention", "ipw")
START_COMMIT = "4877bca"  # the default the arms start from (paired_quality step 600); today's keeps its encoder and head
GENERATE = ["data", "generate", "ecgqa", "--ptbxl", "../shared/data/ptbxl", "--ecgqa", "../shared/data/ecgqa/ecgqa"]
EVALUATIONS = (  # name, questions, probe, sample ids
    ("template-none", "runs/debias/data/test_template.json", "none", 300),
    ("paraphrased-none", "runs/debias/data/test_paraphrased.json", "none", 300),
    ("template-random-ecg", "runs/debias/data/test_template.json", "random-ecg", 300),
    ("template-blind", "runs/debias/data/test_template.json", "blind", 300),
    ("valid-none", "monitor/valid_gen.json", "none", 150),
)


def partial(path: str) -> str:
    """Where this process writes a data file before it is complete (same suffix: the format follows it; the
    process id in the name: arms run at once, each on its own core, and may make the same file)."""
    return str(Path(path).with_name(f".partial-{os.getpid()}-" + Path(path).name))


def data_steps(arm: str) -> list[tuple[str, list[str]]]:
    """(output, ecgllm arguments) for every file the arm needs, in order; each is written to its `partial` name
    and renamed when complete, so a killed step is redone, never taken for done."""
    train = [*GENERATE, "--split", "train", "--n", "2000", "--seed", "11", "--format", "jsonl"]
    steps = [("runs/debias/data/vanilla.jsonl", [*train, "--out", partial("runs/debias/data/vanilla.jsonl")])]
    if arm == "intervention":
        steps = [("runs/debias/data/intervention.jsonl",
                  [*train, "--intervention", "--out", partial("runs/debias/data/intervention.jsonl")])]
    if arm == "ipw":
        steps.append(("runs/debias/data/ipw.jsonl", ["data", "debias", "runs/debias/data/vanilla.jsonl", "--ptbxl",
                                                     "../shared/data/ptbxl", "-o", partial("runs/debias/data/ipw.jsonl")]))
    test = [*GENERATE, "--split", "test", "--n", "400", "--seed", "12"]
    steps += [("runs/debias/data/test_template.json", [*test, "--out", partial("runs/debias/data/test_template.json")]),
              ("runs/debias/data/test_paraphrased.json",
               [*test, "--paraphrase", "1.0", "--out", partial("runs/debias/data/test_paraphrased.json")]),
              ("monitor/valid_gen.json",
               [*GENERATE, "--split", "valid", "--n", "300", "--seed", "21", "--template-ids", *SELECTION_TEMPLATES,
                "--out", partial("monitor/valid_gen.json")])]
    return steps


def seed_steps(arm: str, seed: int) -> list[tuple[str, list[str]]]:
    """(the output that marks the step done, ecgllm arguments): training, then the five evaluations."""
    run = f"runs/debias/{arm}-{seed}"
    recipe = str(CHECKOUT / f"recipes/debias/{arm}.yaml")
    steps = [(f"{run}/final/training_records.json",
              ["train", recipe, "--seed", str(seed), "--output_dir", run, "--quiet"])]
    for name, data, probe, limit in EVALUATIONS:
        out = f"runs/debias/eval/{arm}-{seed}/{name}"
        steps.append((f"{out}/metrics.json",
                      ["eval", "ecgqa", "--data", data, "--ptbxl", "cache/ptbxl100", "--labels", "../shared/data/ptbxl",
                       "--model", f"{run}/final", "--probe", probe, "--limit", str(limit), "--out", out, "--quiet"]))
    return steps


def start_step() -> tuple[str, list[str]]:
    """Extracted into a folder of this process, renamed when whole: a half-extracted start is never used."""
    partial = f"runs/ecgqa/.partial-{os.getpid()}-shipped_q600"
    archive = (f"rm -rf {partial} && mkdir -p {partial} && git -C {CHECKOUT} archive {START_COMMIT} "
               f"src/ecgllm/data/checkpoint | tar -x -C {partial} --strip-components=4 && "
               f"(mv -T {partial} runs/ecgqa/shipped_q600 2>/dev/null || rm -rf {partial})")
    # the marker is a file inside: the folder is renamed whole, and a folder half-extracted by an older version
    # of this step (straight into place) is redone if it lacks it
    return "runs/ecgqa/shipped_q600/training_records.json", ["bash", "-c", archive]


def plan(arm: str, seeds: list[int]) -> list[tuple[str, list[str]]]:
    return [*data_steps(arm), start_step(), *(step for seed in seeds for step in seed_steps(arm, seed))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arm", choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--core", type=int, help="pin training and evaluation to this core (one thread)")
    parser.add_argument("--dry-run", action="store_true", help="print the steps still to do, run nothing")
    args = parser.parse_args()
    if not Path("cache/ptbxl100").is_dir() and not args.dry_run:
        raise SystemExit("run from the folder that holds cache/ptbxl100 (`ecgllm data prepare ptbxl ... --out "
                         "cache/ptbxl100`), runs/ and monitor/, beside shared/")
    env = dict(os.environ)
    pin: list[str] = []
    if args.core is not None:
        env["OMP_NUM_THREADS"] = "1"
        pin = ["taskset", "-c", str(args.core)]
    for done_when, command in plan(args.arm, args.seeds):
        # a training run is done when its final folder lists its records (written last), an evaluation when its
        # metrics.json is there (written last, atomically), the start when its folder is (renamed when whole)
        if Path(done_when).exists():
            continue
        full = command if command[0] == "bash" else [*pin, sys.executable, "-m", "ecgllm.serving.cli", *command]
        print("+ " + " ".join(full), flush=True)
        if args.dry_run:
            continue
        Path(done_when).parent.mkdir(parents=True, exist_ok=True)
        if subprocess.run(full, env=env).returncode != 0:
            raise SystemExit(f"step failed: {' '.join(command)} (re-run the same command to resume)")
        if Path(partial(done_when)).exists():
            Path(partial(done_when)).replace(done_when)  # rename: atomic, and the last of two racing arms wins


if __name__ == "__main__":
    main()
