"""One schema for every conversation about ECGs: references to the ECGs, turns, metadata; JSONL on disk."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

ECG_PLACEHOLDER = "<ecg>"


@dataclass
class ECGRef:
    """Where an ECG comes from: dataset name + record id (+ optional path and a short tag for prompts)."""

    dataset: str
    record_id: int | str
    tag: str = ""
    path: str | None = None
    render: dict | None = None  # {"layout", "augment", "seed"}: the model sees this paper render, not the signal


@dataclass
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass
class Conversation:
    """ECG references, alternating user/assistant turns, and metadata.

    ``meta`` keys used across ecgllm: ``task`` (ecgqa, feature, rhythm, morphology, report), ``format``
    (verify/choose/query for ECG-QA; close, open, fill, mcq, dialogue for instructions), ``question_type``,
    ``attribute_type``, ``template_id``, ``sample_id``, ``answers`` (list of canonical answers per
    assistant turn), ``source``, ``split``.
    """

    id: str
    ecgs: list[ECGRef]
    turns: list[Turn]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Conversation":
        return cls(id=str(data["id"]), ecgs=[ECGRef(**e) for e in data["ecgs"]],
                   turns=[Turn(**t) for t in data["turns"]], meta=dict(data.get("meta", {})))

    def to_llava(self) -> dict[str, Any]:
        """LLaVA conversation format: ``<ecg>`` placeholders (with their tags) open the first human turn."""
        intro = "\n".join(ecg_slot(e.tag) for e in self.ecgs)
        turns = []
        for i, t in enumerate(self.turns):
            value = f"{intro}\n{t.content}" if i == 0 else t.content
            turns.append({"from": "human" if t.role == "user" else "gpt", "value": value})
        return {"id": self.id, "ecg": [f"{e.dataset}/{e.record_id}" for e in self.ecgs], "conversations": turns}


def ecg_tags(n: int, consecutive: bool = True) -> list[str]:
    """The short text tags that introduce the ECGs of one prompt (the one convention of data, training and
    serving): none for one ECG; two of one patient are the earlier and the recent one."""
    if n == 1:
        return [""]
    if n == 2:
        return ["ECG 1 (earlier)", "ECG 2 (recent)"] if consecutive else ["ECG 1", "ECG 2"]
    return [f"ECG {i + 1}" for i in range(n)]


def ecg_slot(tag: str, placeholder: str = ECG_PLACEHOLDER) -> str:
    """How one ECG stands in a prompt: its tag, if any, then its placeholder (``"ECG 1 (earlier): <ecg>"``)."""
    return f"{tag}: {placeholder}" if tag else placeholder


def from_ecgqa(sample: dict[str, Any], dataset: str = "ptbxl", split: str | None = None,
               source: str = "ecgqa") -> Conversation:
    """Wrap an official-schema ECG-QA sample (official or generated) as a one-question conversation."""
    consecutive = str(sample["question_type"]).startswith("comparison_consecutive")
    tags = ecg_tags(len(sample["ecg_id"]), consecutive)
    answer = sample["answer"] if isinstance(sample["answer"], list) else [sample["answer"]]
    return Conversation(
        id=f"{source}-{split or 'x'}-{sample['sample_id']}",
        ecgs=[ECGRef(dataset, int(e), tag) for e, tag in zip(sample["ecg_id"], tags)],
        turns=[Turn("user", sample["question"]), Turn("assistant", ", ".join(answer))],
        meta={"task": "ecgqa", "format": str(sample["question_type"]).rsplit("-", 1)[1],
              "question_type": sample["question_type"], "attribute_type": sample.get("attribute_type"),
              "template_id": sample["template_id"], "sample_id": sample["sample_id"], "answers": [answer],
              "source": source, "split": split})


def write_json_lines(rows: Iterable[dict], path: str | Path) -> int:
    """Write JSON objects, one per line, atomically (nothing half-written is left on failure); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def write_jsonl(conversations: Iterable[Conversation], path: str | Path) -> int:
    """Write conversations, one JSON object per line, atomically; return the count."""
    return write_json_lines((c.to_dict() for c in conversations), path)


def read_jsonl(path: str | Path) -> Iterator[Conversation]:
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield Conversation.from_dict(json.loads(line))
