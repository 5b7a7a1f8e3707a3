"""The card of every trained artifact (``card.json``): what its weights expect and where they come from, in the
spirit of torchvision's weights API (``Weights.meta``): the kind of artifact, the whole preparation of its input, its
label space in output order with names, its pooling, its provenance (package version, git commit, the resolved
recipe, hashes of the training data, of the split policy and of the records every stage behind it saw) and its
headline metrics. One schema for an encoder run, an image-encoder run and a language-model folder.

Folders written before cards existed still load: their loaders read the older files, and `read_card` returns None."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ecgllm.errors import InputError

CARD_FILE = "card.json"
SCHEMA_VERSION = 1
KINDS = ("signal_encoder", "image_encoder", "language_model")


class Provenance(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields a later version adds do not stop an older package

    ecgllm_version: str
    git_commit: str | None = None          # None outside a git checkout; "+dirty" marks uncommitted changes
    recipe: dict[str, Any]                 # the stage's recipe as it ran (paths as given)
    data_sha256: dict[str, str] = {}       # each training data file, by its name
    split_policy_sha256: str | None = None
    training_records_sha256: str | None = None  # of training_records.json: the records every stage saw
    shipped_from: str | None = None        # the run a packaged copy was made from


class ArtifactCard(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    kind: str                              # one of KINDS (a later kind reads, and its loader says it is not its own)
    prep: dict[str, Any]                   # signals: the PrepConfig; pictures: the page's input size
    labels: list[str] = []                 # the classifier's outputs, in order
    label_names: dict[str, str] = {}
    pooling: str | None = None             # how the encoder's tokens pool into the classifier's input
    provenance: Provenance
    metrics: dict[str, Any] = {}


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None (an installed wheel, no git)."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0 or not (root / ".git").exists():
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty else "")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_hashes(files: list[str | Path]) -> dict[str, str]:
    return {Path(f).name: file_sha256(f) for f in files if Path(f).is_file()}


def _records_hashes(folder: str | Path) -> dict[str, str | None]:
    """The split policy's hash and the hash of ``training_records.json`` in ``folder`` (None where it has none)."""
    records = Path(folder) / "training_records.json"
    if not records.exists():
        return {"split_policy_sha256": None, "training_records_sha256": None}
    return {"split_policy_sha256": json.loads(records.read_text())["split_policy_sha256"],
            "training_records_sha256": file_sha256(records)}


def label_space(vocab: dict | None) -> dict[str, Any]:
    """A card's ``labels`` (the 71 statements, then the superclasses, as the classifier orders its outputs) and
    ``label_names`` from a ``labels.json`` vocabulary."""
    vocab = vocab or {}
    return {"labels": vocab.get("all71", []) + vocab.get("superclass", []), "label_names": vocab.get("names", {})}


def provenance(folder: str | Path, recipe: dict[str, Any], data_files: list[str | Path]) -> Provenance:
    """The provenance of the artifact in ``folder``: its ``training_records.json`` must already be written."""
    from ecgllm import __version__

    return Provenance(ecgllm_version=__version__, git_commit=git_commit(), recipe=recipe,
                      data_sha256=_data_hashes(data_files), **_records_hashes(folder))


def write_artifact_card(folder: str | Path, kind: str, prep: dict[str, Any], vocab: dict | None, pooling: str | None,
                        recipe: dict[str, Any], data_files: list[str | Path], metrics: dict | None = None) -> Path:
    """Write the card of a freshly trained artifact (after its ``training_records.json``)."""
    return write_card(folder, ArtifactCard(kind=kind, prep=prep, **label_space(vocab), pooling=pooling,
                                           provenance=provenance(folder, recipe, data_files), metrics=metrics or {}))


def cache_files(cache: str | Path, ptbxl: str | Path | None = None) -> list[Path]:
    """The files that identify a prepared ECG cache: its record index and its preparation (the signals file, half
    a gigabyte, follows from both); with ``ptbxl``, also the PTB-XL label files an encoder stage learned from."""
    from ecgllm.datasets.ptbxl import PTBXL_LABEL_FILES

    labels = [Path(ptbxl) / name for name in PTBXL_LABEL_FILES] if ptbxl is not None else []
    return [Path(cache) / "index.csv", Path(cache) / "meta.json", *labels]


def write_card(folder: str | Path, card: ArtifactCard) -> Path:
    if card.kind not in KINDS:
        raise ValueError(f"artifact kind {card.kind!r}: one of {KINDS}")
    path = Path(folder) / CARD_FILE
    path.write_text(card.model_dump_json(indent=2) + "\n")
    return path


def read_card(folder: str | Path) -> ArtifactCard | None:
    """The card of the artifact in ``folder``; None for a folder written before cards existed."""
    path = Path(folder) / CARD_FILE
    if not path.exists():
        return None
    try:
        return ArtifactCard.model_validate_json(path.read_text())
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise InputError(f"{path}: not a valid artifact card ({'.'.join(map(str, problem['loc']))}: "
                         f"{problem['msg']})") from None


def check_card(folder: str | Path, kind: str, prep: dict[str, Any]) -> ArtifactCard | None:
    """The card of ``folder`` when it has one, checked against what its loader read: the kind of artifact and the
    preparation the weights are served with (a card that disagrees means files of two artifacts were mixed)."""
    card = read_card(folder)
    if card is None:
        return None
    if card.kind != kind:
        raise InputError(f"{folder}: its card.json describes a {card.kind.replace('_', ' ')}, not a "
                         f"{kind.replace('_', ' ')}")
    served = json.loads(json.dumps(prep))  # tuples as lists, as the card stores them
    differs = sorted(k for k in set(card.prep) | set(served) if card.prep.get(k) != served.get(k))
    if differs:
        raise InputError(f"{folder}: card.json and the saved preparation disagree on {', '.join(differs)} "
                         f"(card {({k: card.prep.get(k) for k in differs})}, served {({k: served.get(k) for k in differs})})")
    return card


def card_of_model_folder(folder: str | Path) -> ArtifactCard:
    """A card for a language-model folder written before cards existed, from its own files and, where the folder is
    a run's ``final``/``step-N``, the run's ``recipe.json`` (its data files hashed where they still exist, relative to
    where the run was started). The commit it was trained at is not known: ``git_commit`` stays None."""
    from ecgllm.models.model_folder import read_config

    folder = Path(folder)
    config = read_config(folder)
    prep = json.loads((folder / "processor_config.json").read_text())["prep"]
    vocab = config.label_vocab
    recipe_file = folder.parent / "recipe.json"
    recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else {}
    data_files: list[str | Path] = []
    if recipe.get("output_dir") and folder.parent.resolve().as_posix().endswith(str(recipe["output_dir"]).strip("/")):
        started_in = Path(folder.parent.resolve().as_posix()[: -len(str(recipe["output_dir"]).strip("/"))])
        data = recipe.get("data", {})
        named = [data.get("train"), data.get("measurements")]
        data_files = [started_in / f for f in named if f] + ([started_in / f for f in cache_files(data["ecg_cache"])]
                                                             if data.get("ecg_cache") else [])
    return ArtifactCard(kind="language_model", prep=prep, **label_space(vocab),
                        pooling=(config.model or {}).get("encoder_kwargs", {}).get("pool", "mean"),
                        provenance=Provenance(ecgllm_version=config.ecgllm_version or "unknown", recipe=recipe,
                                              data_sha256=_data_hashes(data_files), **_records_hashes(folder)))
