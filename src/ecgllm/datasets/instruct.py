"""ECGInstruct-style instruction data: feature, rhythm, morphology and report tasks in close-ended,
open-ended, fill-in-the-blank and multiple-choice formats, and 2–4-turn dialogues, all from real labels
(PTB-XL statements) and ecgllm's measurements of the same records."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecgllm.datasets.conversation import Conversation, ECGRef, Turn
from ecgllm.datasets.ecgqa_attributes import scp_name
from ecgllm.signal.measure import axis_category

TASKS = ("feature", "rhythm", "morphology", "report")
FORMATS = ("close", "open", "fill", "mcq")
LETTERS = "ABCD"
# feature -> (measurement column, unit, normal range used for close-ended questions). Clinical conventions of the
# instruction data's own questions, deliberately not ECG-QA's ranges (`ecgqa_attributes.NORMAL_RANGES`), which
# follow ECG-QA's code and answer its templates.
FEATURES = {
    "heart rate": ("heart_rate", "bpm", (60.0, 100.0)),
    "PR interval": ("pr_ms", "ms", (120.0, 200.0)),
    "QRS duration": ("qrs_ms", "ms", (60.0, 110.0)),
    "QT interval": ("qt_ms", "ms", (300.0, 450.0)),
    "corrected QT interval (Bazett)": ("qtc_bazett_ms", "ms", (350.0, 450.0)),
}


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


@dataclass
class RecordFacts:
    ecg_id: int
    rhythm: list[str]
    findings: list[str]        # diagnostic and form statements, most certain first
    normal: bool
    values: dict[str, float]   # measurement column -> value
    report: str | None         # the original PTB-XL report (often German)


class InstructBuilder:
    """Seeded builder over a pool of records (one split)."""

    def __init__(self, ptbxl, pool, measurements: pd.DataFrame | None = None, dataset: str = "ptbxl") -> None:
        s = ptbxl.statements
        names = {c: (scp_name(c, s.at[c, "description"]) or s.at[c, "description"].lower()) for c in s.index}
        self.dataset = dataset
        self.rhythm_space = sorted({names[c] for c in s.index[s.rhythm == 1]})
        self.finding_space = sorted({names[c] for c in s.index[(s.rhythm != 1) & (s.index != "NORM")]})
        measured = measurements.to_dict(orient="index") if measurements is not None else {}
        self.facts: list[RecordFacts] = []
        for ecg_id in sorted(int(i) for i in pool if int(i) in ptbxl.table.index):
            codes = ptbxl.table.at[ecg_id, "scp_codes"]
            ordered = sorted(codes, key=lambda c: -(codes[c] if not math.isnan(codes[c]) else 0))
            values = {k: float(v) for k, v in measured.get(ecg_id, {}).items()
                      if isinstance(v, (int, float)) and not math.isnan(v)}
            report = ptbxl.table.at[ecg_id, "report"] if "report" in ptbxl.table.columns else None
            self.facts.append(RecordFacts(
                ecg_id=ecg_id, rhythm=[names[c] for c in ordered if s.at[c, "rhythm"] == 1],
                findings=[names[c] for c in ordered if s.at[c, "rhythm"] != 1 and c != "NORM"],
                normal="NORM" in codes, values=values, report=report if isinstance(report, str) else None))

    # ------------------------------------------------------------------ one question-answer pair per task
    def _mcq(self, rng, question: str, correct: str, distractors: list[str]) -> tuple[str, str, str]:
        options = [correct] + list(rng.permutation(distractors)[:3])
        order = rng.permutation(len(options))
        options = [options[i] for i in order]
        letter = LETTERS[options.index(correct)]
        listing = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        return f"{question}\n{listing}\nAnswer with the letter.", f"{letter}. {correct}", letter

    def _feature(self, f: RecordFacts, fmt: str, rng) -> tuple[str, str, str] | None:
        available = [k for k, (col, _, _) in FEATURES.items() if col in f.values]
        if fmt == "mcq" and "axis_deg" in f.values and rng.random() < 0.3:
            correct = axis_category(f.values["axis_deg"])
            others = [c for c in ("normal", "left", "right", "extreme") if c != correct]
            return self._mcq(rng, "Which category does the frontal QRS axis of this ECG fall in?", correct, others)
        if not available:
            return None
        name = _pick(rng, available)
        col, unit, (lo, hi) = FEATURES[name]
        value = round(f.values[col])
        if fmt == "open":
            return f"What is the {name} of this ECG?", f"The {name} is {value} {unit}.", str(value)
        if fmt == "fill":
            return (f"Fill in the blank: the {name} of this ECG is ___ {unit}.", str(value), str(value))
        if fmt == "close":
            inside = lo <= f.values[col] <= hi
            answer = "yes" if inside else "no"
            return (f"Is the {name} of this ECG within the normal range ({lo:g}–{hi:g} {unit})?",
                    f"{answer.capitalize()}, it is {value} {unit}.", answer)
        shifts = [s for s in (-0.4, -0.2, 0.2, 0.4) if round(value * (1 + s)) != value]
        distractors = [f"{round(value * (1 + s))} {unit}" for s in shifts]
        return self._mcq(rng, f"What is the {name} of this ECG?", f"{value} {unit}", distractors)

    def _labelled(self, f: RecordFacts, fmt: str, rng, present: list[str], space: list[str],
                  what: str) -> tuple[str, str, str] | None:
        absent = [x for x in space if x not in present]
        if fmt == "open":
            if what == "rhythm":
                if not present:
                    return None
                text = ", ".join(present)
                return "What is the rhythm of this ECG?", text[0].upper() + text[1:] + ".", "; ".join(present)
            if not present:
                return ("What abnormalities does this ECG show?",
                        "None: this is a normal ECG." if f.normal else "No specific abnormality is labelled.",
                        "none")
            return "What abnormalities does this ECG show?", "; ".join(present) + ".", "; ".join(present)
        if fmt == "close":
            target = _pick(rng, present) if present and rng.random() < 0.5 else _pick(rng, absent)
            answer = "yes" if target in present else "no"
            return f"Does this ECG show {target}?", answer.capitalize() + ".", answer
        if not present:
            return None
        if fmt == "fill":
            noun = "rhythm" if what == "rhythm" else "main finding"
            return f"Fill in the blank: the {noun} of this ECG is ___.", present[0], present[0]
        question = ("What is the rhythm of this ECG?" if what == "rhythm"
                    else "Which of the following findings does this ECG show?")
        return self._mcq(rng, question, present[0], absent)

    def report_text(self, f: RecordFacts) -> str:
        """A structured English report from the labels and measurements of one record."""
        v = f.values
        parts = []
        rhythm = ", ".join(f.rhythm) if f.rhythm else "rhythm not labelled"
        rate = f", {round(v['heart_rate'])} bpm" if "heart_rate" in v else ""
        parts.append(f"Rhythm: {rhythm}{rate}.")
        intervals = [f"{label} {round(v[col])} ms" for label, col in
                     (("PR", "pr_ms"), ("QRS", "qrs_ms"), ("QT", "qt_ms"), ("QTc", "qtc_bazett_ms")) if col in v]
        if intervals:
            parts.append("Intervals: " + ", ".join(intervals) + ".")
        if "axis_deg" in v:
            parts.append(f"Frontal QRS axis: {round(v['axis_deg'])}° ({axis_category(v['axis_deg'])}).")
        parts.append("Findings: " + ("; ".join(f.findings) if f.findings else "none") + ".")
        parts.append("Impression: " + ("normal ECG." if f.normal and not f.findings else
                                       "abnormal ECG." if f.findings else "no diagnostic statement."))
        return " ".join(parts)

    def _qa(self, f: RecordFacts, task: str, fmt: str, rng) -> tuple[str, str, str] | None:
        if task == "feature":
            return self._feature(f, fmt, rng)
        if task == "rhythm":
            return self._labelled(f, fmt, rng, f.rhythm, self.rhythm_space, "rhythm")
        if task == "morphology":
            return self._labelled(f, fmt, rng, f.findings, self.finding_space, "morphology")
        return "Write a structured report for this ECG.", self.report_text(f), "report"

    # ------------------------------------------------------------------------------------- public
    def build(self, n: int, seed: int = 0, split: str | None = None, dialogue_rate: float = 0.2,
              tasks: tuple[str, ...] = TASKS) -> list[Conversation]:
        """``n`` conversations; a share ``dialogue_rate`` are 2–4-turn dialogues about one record."""
        rng = np.random.default_rng(seed)
        out: list[Conversation] = []
        attempts = 0
        while len(out) < n and self.facts and attempts < 20 * n + 100:
            attempts += 1
            f = self.facts[int(rng.integers(len(self.facts)))]
            n_turns = int(rng.integers(2, 5)) if rng.random() < dialogue_rate else 1
            turns, answers, kinds = [], [], []
            for _ in range(n_turns):
                task = _pick(rng, tasks)
                fmt = "open" if task == "report" else _pick(rng, FORMATS)
                qa = self._qa(f, task, fmt, rng)
                if qa is None:
                    continue
                turns += [Turn("user", qa[0]), Turn("assistant", qa[1])]
                answers.append(qa[2])
                kinds.append((task, fmt))
            if not turns:
                continue
            meta = {"task": kinds[0][0] if len(kinds) == 1 else "dialogue",
                    "format": kinds[0][1] if len(kinds) == 1 else "dialogue", "turn_kinds": kinds,
                    "answers": answers, "source": "ecginstruct-style", "split": split}
            if any(t == "report" for t, _ in kinds) and f.report:
                meta["original_report"] = f.report
            out.append(Conversation(id=f"instruct-{split or 'x'}-{seed}-{len(out)}",
                                    ecgs=[ECGRef(self.dataset, f.ecg_id)], turns=turns, meta=meta))
        return out
