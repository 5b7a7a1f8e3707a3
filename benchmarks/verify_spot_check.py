"""Spot check: do a checkpoint's yes/no answers follow the ECG? Three verify questions, each asked about six
fold-10 records that have the statement and six that do not (PTB-XL labels).

    python benchmarks/verify_spot_check.py CHECKPOINT --ptbxl ../shared/data/ptbxl --signals cache/ptbxl100

Prints the 12 answers per question, positives first. Used on the stage-2 and stage-3 ECG-QA models
(docs/results/ecgqa_model.md): a model that reads the ECG says "yes" to the first six and "no" to the rest.
"""

from __future__ import annotations

import argparse

from ecgllm.datasets.ptbxl import PTBXL
from ecgllm.datasets.ptbxl_signals import PTBXLSignals
from ecgllm.models.answering import generate_answers
from ecgllm.models.default import load_checkpoint

QUESTIONS = (("AFIB", "Does this ECG show symptoms of atrial fibrillation?"), ("NORM", "Is this a normal ECG?"),
             ("LVH", "Does this ECG show symptoms of left ventricular hypertrophy?"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--ptbxl", required=True, help="PTB-XL labels folder")
    parser.add_argument("--signals", required=True, help="PTB-XL signals: official folder or prepared cache")
    parser.add_argument("--per-side", type=int, default=6)
    args = parser.parse_args()
    model, processor, _ = load_checkpoint(args.checkpoint, "cpu", "float32")
    ptbxl, source = PTBXL.load(args.ptbxl), PTBXLSignals.open(args.signals)
    fold10 = [int(i) for i in ptbxl.table.index[ptbxl.table.strat_fold == 10]]
    for code, question in QUESTIONS:
        positive = [i for i in fold10 if code in ptbxl.labels(i, "all")][: args.per_side]
        negative = [i for i in fold10 if code not in ptbxl.labels(i, "all")][: args.per_side]
        ids = positive + negative
        answers = generate_answers(model, processor, [question] * len(ids), [[source.get(i)] for i in ids],
                                   [[""]] * len(ids), max_new_tokens=4).texts
        print(f"{code}: with {answers[: len(positive)]}  without {answers[len(positive):]}")


if __name__ == "__main__":
    main()
