"""ECG-QA, official release: QA samples (template / paraphrased), split ECG lists, answer vocabularies.

Layout (``ecgqa/ptbxl`` or ``ecgqa/mimic-iv-ecg``):
``{template,paraphrased}/{train,valid,test}/NNNNN.json[.gz]``, ``{train,valid,test}_ecgs.tsv``,
``answers.csv``, ``answers_for_each_template.csv``.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ecgllm.errors import InputError

SPLITS = ("train", "valid", "test")
VARIANTS = ("template", "paraphrased")
QUESTION_TYPES = (
    "single-verify", "single-choose", "single-query",
    "comparison_consecutive-verify", "comparison_consecutive-query",
    "comparison_irrelevant-verify", "comparison_irrelevant-query",
)
ATTRIBUTE_TYPES = ("scp_code", "noise", "stage_of_infarction", "extra_systole", "heart_axis", "numeric_feature")


class ECGQAFormatError(InputError):
    """A file does not follow the official ECG-QA format; the message names it and the problem."""


@dataclass
class QASample:
    """One official ECG-QA sample (field names as in the official JSON)."""

    sample_id: int
    template_id: int
    question_id: int
    question_type: str
    attribute_type: str
    question: str
    answer: list[str]
    ecg_id: list[int]
    attribute: list[str] | None = None
    split: str | None = None
    variant: str | None = None

    def to_official(self) -> dict[str, Any]:
        """The sample as the official JSON writes it (without our split/variant bookkeeping)."""
        data = asdict(self)
        data.pop("split")
        data.pop("variant")
        return data

    @property
    def is_comparison(self) -> bool:
        return self.question_type.startswith("comparison")


_REQUIRED = ("sample_id", "template_id", "question_type", "question", "answer", "ecg_id")


def read_qa_file(path: str | Path, split: str | None = None, variant: str | None = None) -> list[QASample]:
    """Read one official-format file (``.json`` or ``.json.gz``: a list of sample objects)."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ECGQAFormatError(f"{path}: does not exist.") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ECGQAFormatError(f"{path}: not a readable ECG-QA JSON file ({exc}).") from None
    if not isinstance(data, list):
        raise ECGQAFormatError(f"{path}: expected a JSON list of QA samples, found {type(data).__name__}.")
    samples = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or any(k not in item for k in _REQUIRED):
            missing = [k for k in _REQUIRED if not isinstance(item, dict) or k not in item]
            raise ECGQAFormatError(f"{path}: sample #{i} lacks the fields {missing}.")
        answer = item["answer"] if isinstance(item["answer"], list) else [item["answer"]]
        samples.append(QASample(
            sample_id=int(item["sample_id"]), template_id=int(item["template_id"]),
            question_id=int(item.get("question_id", -1)), question_type=str(item["question_type"]),
            attribute_type=str(item.get("attribute_type", "")), question=str(item["question"]),
            answer=[str(a) for a in answer], ecg_id=[int(e) for e in item["ecg_id"]],
            attribute=item.get("attribute"), split=split, variant=variant))
    return samples


class ECGQA:
    """An ECG-QA release folder (``ecgqa/ptbxl`` or ``ecgqa/mimic-iv-ecg``)."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if (root / "ptbxl").is_dir() and not (root / "answers.csv").exists():
            root = root / "ptbxl"  # given the release root: default to the PTB-XL version
        if not (root / "answers.csv").exists():
            raise ECGQAFormatError(f"{root}: not an ECG-QA folder (answers.csv missing). Give ecgqa/ptbxl or "
                                   "ecgqa/mimic-iv-ecg of the official release.")
        self.root = root
        self.source = "mimic-iv-ecg" if "mimic" in root.name.lower() else "ptbxl"

    def files(self, split: str, variant: str = "template") -> list[Path]:
        if split not in SPLITS or variant not in VARIANTS:
            raise ValueError(f"split must be in {SPLITS} and variant in {VARIANTS}")
        folder = self.root / variant / split
        return sorted(list(folder.glob("*.json")) + list(folder.glob("*.json.gz")))

    def samples(self, split: str, variant: str = "template") -> list[QASample]:
        """Every sample of a split present in this copy (the shared copy holds only some chunks)."""
        out: list[QASample] = []
        for path in self.files(split, variant):
            out.extend(read_qa_file(path, split, variant))
        return out

    def split_ecg_ids(self, split: str) -> set[int]:
        """ECG ids of an ECG-QA split from ``{split}_ecgs.tsv`` (``index<TAB>ecg_id`` rows)."""
        path = self.root / f"{split}_ecgs.tsv"
        if not path.exists():
            raise ECGQAFormatError(f"{path}: missing; it lists the ECGs of the {split} split.")
        return read_ecg_id_list(path)


    def answers(self) -> list[str]:
        with (self.root / "answers.csv").open(newline="") as fh:
            return [row["class"] for row in csv.DictReader(fh)]

    def template_answers(self) -> dict[int, list[str]]:
        """Answer options per template id (``answers_for_each_template.csv``)."""
        with (self.root / "answers_for_each_template.csv").open(newline="") as fh:
            return {int(row["template_id"]): list(ast.literal_eval(row["classes"])) for row in csv.DictReader(fh)}

    def ecg_paths(self, sample: QASample, dataset_root: str | Path, prefer_fs: int = 500) -> list[Path]:
        """Record paths of a sample's ECGs. The official mapping uses PTB-XL ``records500``; when only
        ``records100`` exists (as in the shared copy), that is used instead."""
        from ecgllm.io.formats.wfdb_format import mimic_record_path, ptbxl_record_path

        root = Path(dataset_root)
        if self.source == "mimic-iv-ecg":
            return [mimic_record_path(root, e) for e in sample.ecg_id]
        return [ptbxl_record_path(root, e, prefer_fs) for e in sample.ecg_id]


def read_ecg_id_list(path: str | Path) -> set[int]:
    """ECG ids listed one per row, in the last column of a tab- or comma-separated file (ECG-QA's
    ``{split}_ecgs.tsv``: ``index<TAB>ecg_id``); rows without a number there (headers) are skipped."""
    ids: set[int] = set()
    for line in Path(path).read_text().splitlines():
        last = line.replace(",", "\t").split("\t")[-1].strip()
        if last.isdigit():
            ids.add(int(last))
    return ids
