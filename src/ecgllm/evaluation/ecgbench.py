"""ECGBench-style suite on the real data we have, for any answerer (``prompts -> [(text, P(yes))]``):

- PTB-XL superclass abnormality detection: one yes/no question per superclass and record. Macro AUC from the
  answer scores (P(yes) at the first answer token), and — separately and labelled as such — the "AUC" computed
  from 0/1 answers that some papers report; macro F1 and Hamming loss of the 0/1 answers.
- Report generation: statements are extracted from the generated text (no LLM judge) and compared with the
  record's SCP statements (label F1); BLEU (sacrebleu) and ROUGE-L (rouge-score) against the statement
  descriptions, for comparability only.
- Multiple choice: one present and three absent statements as options A–D; accuracy (unparseable = wrong).
- Zero-shot sets (CPSC 2018, CODE-15%): yes/no questions about their labelled conditions; accuracy with
  Wilson 95% intervals and the counts, since the sets are small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ecgllm.datasets.ecgqa_attributes import SCP_NAME_OVERRIDES, SUPERCLASS_NAMES
from ecgllm.datasets.ptbxl import SUPERCLASSES  # one order of the five classes everywhere
from ecgllm.evaluation.answers import ALIASES, key, parse_answer, parse_choice
from ecgllm.evaluation.ecgqa_eval import MODALITIES, picture_of
from ecgllm.evaluation.runner import Prompt
from ecgllm.evaluation.stats import bootstrap_metric_ci, wilson_ci
from ecgllm.io.record import ECG

Answerer = Callable[[Sequence[Prompt]], list[tuple[str, float]]]
REPORT_PROMPT = "Write a short clinical report of this ECG."


def superclass_question(code: str) -> str:
    return "Is this a normal ECG?" if code == "NORM" else f"Does this ECG show symptoms of {SUPERCLASS_NAMES[code]}?"


def _batched(answerer: Answerer, prompts: list[Prompt], batch: int, desc: str, progress: bool):
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(prompts), batch), desc=desc, disable=not progress):
        out.extend(answerer(prompts[i:i + batch]))
    return out


def _yes(text: str) -> int | None:
    parsed = parse_answer(text, ("no", "yes")).answers
    return None if parsed is None else int("yes" in parsed)


def multilabel_metrics(y: np.ndarray, scores: np.ndarray, binary: np.ndarray, classes: Sequence[str],
                       interval: bool = True) -> dict:
    """[records, classes] labels, P(yes) scores and 0/1 answers -> macro AUC from the scores (over the classes
    with both outcomes present, with a bootstrap interval), the 0/1 "AUC" that ECGBench-style papers report
    (each class's (sensitivity + specificity) / 2, labelled as such), macro F1 and Hamming loss."""
    from sklearn.metrics import f1_score, hamming_loss, roc_auc_score

    keep = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    out: dict = {}
    if keep and not np.isnan(scores).any():
        macro = lambda t, s: roc_auc_score(t[:, keep], s[:, keep], average="macro")  # noqa: E731
        out["macro_auc_from_scores"] = round(float(macro(y, scores)), 4)
        if interval:
            out["macro_auc_from_scores_ci95"] = [round(v, 4) for v in bootstrap_metric_ci(macro, y, scores)]
        out["per_class_auc"] = {classes[j]: round(float(roc_auc_score(y[:, j], scores[:, j])), 4) for j in keep}
    if keep:
        out["auc_from_binary_answers_as_anchors_report"] = round(
            float(roc_auc_score(y[:, keep], binary[:, keep], average="macro")), 4)
    out["macro_f1"] = round(float(f1_score(y, binary, average="macro", zero_division=0)), 4)
    out["hamming_loss"] = round(float(hamming_loss(y, binary)), 4)
    return out


def superclass_detection(answerer: Answerer, ecgs: Sequence[ECG], y: np.ndarray, batch: int = 16,
                         progress: bool = True) -> tuple[dict, np.ndarray]:
    """Metrics and the [records, 5] P(yes) scores."""
    prompts = [Prompt(superclass_question(c), [e], [""]) for e in ecgs for c in SUPERCLASSES]
    answers = _batched(answerer, prompts, batch, "superclass questions", progress)
    scores = np.array([p for _, p in answers], dtype=np.float64).reshape(len(ecgs), len(SUPERCLASSES))
    parsed = [_yes(t) for t, _ in answers]
    binary = np.array([0 if v is None else v for v in parsed]).reshape(scores.shape)
    out = {"records": len(ecgs), "questions": len(prompts), "unparseable": int(sum(v is None for v in parsed)),
           **multilabel_metrics(y, scores, binary, SUPERCLASSES)}
    return out, scores


@dataclass
class StatementMatcher:
    """Finds SCP statements named in free text: descriptions, ECG-QA names and common abbreviations."""

    phrases: list[tuple[str, str]]    # (phrase key, code), longest first

    @classmethod
    def from_statements(cls, descriptions: dict[str, str]) -> "StatementMatcher":
        by_name = {}
        for code, description in descriptions.items():
            for name in (description, SCP_NAME_OVERRIDES.get(code) or description):
                by_name[key(name)] = code
        for alias, targets in ALIASES.items():
            for target in targets:
                if key(target) in by_name and len(alias) > 2:  # 2-letter aliases are too ambiguous in prose
                    by_name.setdefault(key(alias), by_name[key(target)])
        phrases = sorted(((k, c) for k, c in by_name.items() if k), key=lambda kc: -len(kc[0]))
        return cls(phrases)

    def __call__(self, text: str) -> set[str]:
        remaining, found = f" {key(text)} ", set()
        for phrase, code in self.phrases:
            pattern = f" {phrase} "
            if pattern in remaining:
                found.add(code)
                remaining = remaining.replace(pattern, " | ")  # a longer phrase owns its words
        return found


def report_generation(answerer: Answerer, ecgs: Sequence[ECG], statements: Sequence[Sequence[str]],
                      descriptions: dict[str, str], batch: int = 8, progress: bool = True) -> dict:
    import sacrebleu
    from rouge_score import rouge_scorer
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    texts = [t for t, _ in _batched(answerer, [Prompt(REPORT_PROMPT, [e], [""]) for e in ecgs], batch,
                                    "reports", progress)]
    matcher = StatementMatcher.from_statements(descriptions)
    predicted = [matcher(t) for t in texts]
    binarizer = MultiLabelBinarizer(classes=sorted(descriptions))
    y_true = binarizer.fit_transform([set(s) for s in statements])
    y_pred = binarizer.transform(predicted)
    references = ["; ".join(descriptions.get(c, c) for c in s) for s in statements]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return {"records": len(ecgs),
            "label_f1_micro": round(float(f1_score(y_true, y_pred, average="micro", zero_division=0)), 4),
            "label_f1_samples": round(float(f1_score(y_true, y_pred, average="samples", zero_division=0)), 4),
            "reports_without_any_statement": int(sum(not p for p in predicted)),
            "bleu": round(float(sacrebleu.corpus_bleu(texts, [references]).score), 2),
            "rouge_l": round(float(np.mean([scorer.score(r, t)["rougeL"].fmeasure for r, t in zip(references, texts)])), 4),
            "examples": [{"generated": t, "reference": r} for t, r in list(zip(texts, references))[:5]]}


def multiple_choice(answerer: Answerer, ecgs: Sequence[ECG], statements: Sequence[Sequence[str]],
                    descriptions: dict[str, str], seed: int = 0, batch: int = 16, progress: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    codes = sorted(descriptions)
    prompts, correct = [], []
    for ecg, present in zip(ecgs, statements):
        present = [c for c in present if c in descriptions]
        if not present:
            continue
        absent = [c for c in codes if c not in present]
        options = [str(rng.choice(present)), *rng.choice(absent, 3, replace=False).tolist()]
        order = rng.permutation(4)
        texts = [descriptions[options[i]] for i in order]
        letters = "\n".join(f"{chr(65 + i)}) {t}" for i, t in enumerate(texts))
        prompts.append((Prompt(f"Which of the following does this ECG show?\n{letters}\nAnswer with a letter.",
                               [ecg], [""]), texts))
        correct.append(int(np.flatnonzero(order == 0)[0]))
    answers = _batched(answerer, [p for p, _ in prompts], batch, "multiple choice", progress)
    picks = [parse_choice(t, texts) for (t, _), (_, texts) in zip(answers, prompts)]
    right = sum(p == c for p, c in zip(picks, correct))
    return {"questions": len(prompts), "accuracy": round(right / max(1, len(prompts)), 4),
            "accuracy_ci95": [round(v, 4) for v in wilson_ci(right, len(prompts))],
            "unparseable": int(sum(p is None for p in picks)), "chance": 0.25}


# conditions of the zero-shot sets, as ECG-QA names them
CPSC_CONDITIONS = {"PAC": "atrial premature complex", "STD": "non-specific st depression",
                   "I-AVB": "first degree av block", "RBBB": "complete right bundle branch block",
                   "AF": "atrial fibrillation", "LBBB": "complete left bundle branch block",
                   "PVC": "ventricular premature complex", "STE": "non-specific st elevation"}
CODE15_CONDITIONS = {"1dAVb": "first degree av block", "RBBB": "complete right bundle branch block",
                     "LBBB": "complete left bundle branch block", "SB": "sinus bradycardia",
                     "ST": "sinus tachycardia", "AF": "atrial fibrillation"}


def zero_shot_questions(folder: Path) -> list[tuple[str, str, int]]:
    """(file, question, 1 if the answer is yes) for the CPSC 2018 or CODE-15% sample folder."""
    import pandas as pd

    out = []
    if (folder / "labels.csv").exists() and "Recording" in (folder / "labels.csv").read_text()[:200]:  # CPSC 2018
        labels = pd.read_csv(folder / "labels.csv")
        names = {1: "Normal", 2: "AF", 3: "I-AVB", 4: "LBBB", 5: "RBBB", 6: "PAC", 7: "PVC", 8: "STD", 9: "STE"}
        present = {r.Recording: {names.get(int(v)) for v in (r.First_label, r.Second_label, r.Third_label)
                                 if v == v} for r in labels.itertuples()}
        asked = sorted({c for s in present.values() for c in s if c in CPSC_CONDITIONS})
        for rec, codes in present.items():
            out += [(f"{rec}.mat", f"Does this ECG show symptoms of {CPSC_CONDITIONS[c]}?", int(c in codes))
                    for c in asked]
    elif (folder / "meta.csv").exists():  # CODE-15%
        for r in pd.read_csv(folder / "meta.csv").to_dict("records"):
            out += [(r["save_file"], f"Does this ECG show symptoms of {name}?", int(bool(r[c])))
                    for c, name in CODE15_CONDITIONS.items()]
    return out


def zero_shot(answerer: Answerer, folder: Path, batch: int = 16, progress: bool = True,
              as_given: Callable[[ECG, int | str], ECG] | None = None) -> dict:
    """``as_given(ecg, key)`` turns each read recording into what the model is shown (a render of it, for the picture
    path; ``key``: the recording's file name)."""
    from ecgllm.io.reader import read_ecg

    questions = zero_shot_questions(folder)
    ecgs = {f: read_ecg(folder / f) for f in sorted({f for f, _, _ in questions})}
    if as_given is not None:
        ecgs = {f: as_given(ecg, f"{folder.name}/{f}") for f, ecg in ecgs.items()}
    answers = _batched(answerer, [Prompt(q, [ecgs[f]], [""]) for f, q, _ in questions], batch, folder.name, progress)
    parsed = [_yes(t) for t, _ in answers]
    right = sum(p == y for p, (_, _, y) in zip(parsed, questions))
    # Most answers are "no" here: accuracy alone rewards a model that always says "no", so the rates per class
    # and their mean (balanced accuracy, 0.5 for any constant answer) come with it.
    positives = [p == 1 for p, (_, _, y) in zip(parsed, questions) if y == 1]
    negatives = [p == 0 for p, (_, _, y) in zip(parsed, questions) if y == 0]
    sensitivity = float(np.mean(positives)) if positives else None
    specificity = float(np.mean(negatives)) if negatives else None
    balanced = None if sensitivity is None or specificity is None else (sensitivity + specificity) / 2
    # the same answers as a [recording, condition] matrix, scored as ECGBench scores its multi-label sets
    files, asked = sorted({f for f, _, _ in questions}), sorted({q for _, q, _ in questions})
    cell = {(f, q): i for i, (f, q, _) in enumerate(questions)}
    grid = [[cell.get((f, q)) for q in asked] for f in files]
    if all(i is not None for row in grid for i in row):
        index = np.array(grid)
        y = np.array([t for _, _, t in questions])[index]
        scores = np.array([p for _, p in answers], dtype=np.float64)[index]
        binary = np.array([0 if v is None else v for v in parsed])[index]
        # a handful of recordings: no bootstrap interval on the AUC
        multilabel = multilabel_metrics(y, scores, binary, [q.removeprefix("Does this ECG show symptoms of ")
                                                             .rstrip("?") for q in asked], interval=False)
    else:
        multilabel = {}
    return {**multilabel, "records": len(ecgs), "questions": len(questions), "positives": len(positives),
            "accuracy": round(right / max(1, len(questions)), 4),
            "accuracy_ci95": [round(v, 4) for v in wilson_ci(right, len(questions))],
            "sensitivity": None if sensitivity is None else round(sensitivity, 4),
            "specificity": None if specificity is None else round(specificity, 4),
            "balanced_acc": None if balanced is None else round(balanced, 4),
            "unparseable": int(sum(p is None for p in parsed))}


def run_ecgbench(out: str | Path, ptbxl: str, model: str | None = None, labels: str | None = None,
                 records: int = 200, external: str | None = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = True, loaded=None, device: str = "auto",
                 dtype: str = "auto", modality: str = "signal") -> dict:
    """The whole suite for one model into one run folder. ``modality`` "image" or "image-augmented" asks every
    question about a paper render of each recording (clean, or with print/photo distortions drawn per record),
    read through the checkpoint's image encoder: the ECGBench-style suite of the picture path."""
    from ecgllm.datasets.ptbxl import PTBXL
    from ecgllm.datasets.ptbxl_signals import PTBXLSignals
    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, labels_dir_for
    from ecgllm.models.default import load_checkpoint
    from ecgllm.evaluation.report import plot_reliability, run_info, write_run
    from ecgllm.evaluation.runner import ModelAnswerer

    from ecgllm.datasets.split_policy import load_policy, seen_by_checkpoint

    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    model_name, model_dir = "given in memory", None
    if loaded is None:
        *loaded, model_dir = load_checkpoint(model, device, dtype)
        model_name = str(model_dir)
    labels_dir = labels_dir_for(EcgqaRun(data=[], ptbxl=ptbxl, out=str(out), labels=labels))
    if labels_dir is None:
        raise FileNotFoundError("PTB-XL labels are needed (ptbxl_labels.csv or ptbxl_database.csv): pass --labels")
    ptbxl_labels = PTBXL.load(labels_dir)
    table = ptbxl_labels.table
    # fold 10 of ECG-QA test patients only: the LLM stages train on ECG-QA train ECGs, which fill most of fold 10
    held_out = load_policy().test_patient_records
    fold10 = np.array(sorted(i for i in table.index[table["strat_fold"] == 10] if int(i) in held_out))
    chosen = np.sort(np.random.default_rng(seed).choice(fold10, min(records, len(fold10)), replace=False))
    as_given = None if modality == "signal" else \
        (lambda ecg, key: picture_of(ecg, modality == "image-augmented", seed, key))
    source = PTBXLSignals.open(ptbxl)
    source.prefetch(chosen)
    ecgs = [source.get(int(i)) for i in chosen]
    if as_given is not None:
        ecgs = [as_given(ecg, int(i)) for ecg, i in zip(ecgs, chosen)]
    _, classes, y = ptbxl_labels.label_matrix("superclass", chosen)
    y = y[:, [classes.index(c) for c in SUPERCLASSES]]
    statements = [ptbxl_labels.labels(int(i), "all") for i in chosen]
    descriptions = ptbxl_labels.statements["description"].to_dict()
    answer = ModelAnswerer(*loaded, batch_size=batch_size, max_new_tokens=8)
    long_answer = ModelAnswerer(*loaded, batch_size=max(1, batch_size // 2), max_new_tokens=64)
    detection, scores = superclass_detection(answer, ecgs, y, batch_size, progress)
    metrics: dict = {"superclass_detection": detection,
                     "report_generation": report_generation(long_answer, ecgs, statements, descriptions,
                                                            max(1, batch_size // 2), progress),
                     "multiple_choice": multiple_choice(answer, ecgs, statements, descriptions, seed, batch_size,
                                                        progress)}
    if external:
        for name in ("cpsc2018", "code15"):
            folder = Path(external) / name
            if folder.is_dir():
                metrics[f"zero_shot_{name}"] = zero_shot(answer, folder, batch_size, progress, as_given)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = {}
    for task, values in metrics.items():
        rows = [f"| {k} | {v} |" for k, v in values.items() if k not in ("examples", "per_class_auc")]
        sections[task.replace("_", " ")] = "| metric | value |\n|---|---|\n" + "\n".join(rows)
    sections["superclass detection"] += ("\n\n`macro_auc_from_scores` ranks P(yes); "
                                         "`auc_from_binary_answers_as_anchors_report` is the 0/1 \"AUC\" some papers "
                                         "report, kept only for comparison.")
    seen = seen_by_checkpoint(model_dir, chosen) if model_dir is not None else {"split_policy": "not checked"}
    info = run_info(model_name, f"PTB-XL fold 10 ∩ ECG-QA test patients, {len(chosen)} records (seed {seed})", seed,
                    {"seen_in_training": seen, "modality": modality})
    if not np.isnan(scores).any() and plot_reliability(y.ravel(), scores.ravel(), out / "reliability.png",
                                                         "superclass questions: P(yes) calibration"):
        sections["calibration"] = "![reliability](reliability.png)"
    write_run(out, metrics, info, "ECGBench-style suite", sections)
    return metrics
