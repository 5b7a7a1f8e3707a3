"""The split policy: which PTB-XL records weight training may never see, decided by patient.

ECG-QA splits its PTB-XL ECGs by patient. Every ECG of a patient with an ECG-QA *test* ECG is held out from every
stage that fits weights (encoder, contrastive, image distillation, LLM stages); so is every ECG of a patient
with an ECG-QA *valid* ECG (valid selects models). The sets are computed once from the official split files and
PTB-XL's ``ptbxl_database.csv`` and shipped with the package (``data/split_policy.json``), so every trainer
checks the same list without needing the data folders, and every checkpoint records the policy's hash.

A record whose patient is unknown is treated as its own patient (it is forbidden only if it is itself a
valid/test ECG); such records are counted in the policy file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from ecgllm.errors import InputError

POLICY_JSON = Path(__file__).resolve().parents[1] / "data" / "split_policy.json"


class ForbiddenRecordsError(InputError):
    """Training data holds records of ECG-QA valid or test patients."""


class PolicyMismatchError(InputError):
    """A checkpoint was trained under another split policy than the one evaluating it."""


@dataclass(frozen=True)
class SplitPolicy:
    test_patient_records: frozenset[int]    # every PTB-XL ECG of a patient with an ECG-QA test ECG
    valid_patient_records: frozenset[int]   # ... with an ECG-QA valid ECG
    unknown_patient_records: int
    sha256: str

    @property
    def fit_forbidden(self) -> frozenset[int]:
        """Records no weight-fitting stage may use."""
        return self.test_patient_records | self.valid_patient_records

    def forbidden_in(self, record_ids: Iterable[int]) -> list[int]:
        return sorted(set(int(i) for i in record_ids) & self.fit_forbidden)

    def refuse(self, record_ids: Iterable[int], source: str, stage: str) -> None:
        """Stop with a sentence when ``record_ids`` (PTB-XL ecg_ids that ``source`` brought into ``stage``)
        hold any record of an ECG-QA valid or test patient."""
        bad = self.forbidden_in(record_ids)
        if bad:
            test = sum(i in self.test_patient_records for i in bad)
            raise ForbiddenRecordsError(
                f"{source}: {len(bad)} records of ECG-QA held-out patients ({test} of test patients, "
                f"{len(bad) - test} of valid patients; e.g. ecg_id {bad[:5]}) would be trained on in the {stage} "
                f"stage. Weight training never sees them: rebuild the data from ECG-QA train ECGs only "
                f"(split policy {self.sha256[:12]}).")

    def seen(self, evaluated: Iterable[int], trained: Iterable[int],
             patients: dict[int, object] | None = None) -> dict[str, int]:
        """How many evaluated records (and, given ``patients``, their patients) a checkpoint trained on."""
        evaluated, trained = set(int(i) for i in evaluated), set(int(i) for i in trained)
        out = {"records_evaluated": len(evaluated), "records_seen_in_training": len(evaluated & trained)}
        if patients is not None:
            of = {patients[i] for i in evaluated if i in patients}
            out |= {"patients_evaluated": len(of),
                    "patients_seen_in_training": len(of & {patients[i] for i in trained if i in patients})}
        return out


def build_policy(ecgqa_dir: str | Path, ptbxl_database: str | Path) -> dict:
    """The policy file's content from the official ECG-QA split lists and PTB-XL's patient ids."""
    import pandas as pd

    from ecgllm.datasets.ecgqa import ECGQA

    qa = ECGQA(ecgqa_dir)
    table = pd.read_csv(ptbxl_database, usecols=["ecg_id", "patient_id"], index_col="ecg_id")
    patient = {int(e): (None if pd.isna(p) else int(p)) for e, p in table["patient_id"].items()}
    records_of: dict[int, set[int]] = {}
    for ecg_id, p in patient.items():
        if p is not None:
            records_of.setdefault(p, set()).add(ecg_id)

    def closure(ids: set[int]) -> list[int]:
        out: set[int] = set()
        for i in ids:
            p = patient.get(i)
            out |= records_of[p] if p is not None else {i}
        return sorted(out)

    test, valid = closure(qa.split_ecg_ids("test")), closure(qa.split_ecg_ids("valid"))
    return {"description": "PTB-XL ecg_ids of patients with an ECG-QA test / valid ECG (ecgllm.datasets.split_policy)",
            "test_patient_records": test, "valid_patient_records": valid,
            "unknown_patient_records": sum(p is None for p in patient.values())}


def policy_hash(content: dict) -> str:
    return hashlib.sha256(json.dumps({k: content[k] for k in ("test_patient_records", "valid_patient_records")},
                                     sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=1)
def load_policy(path: str | Path = POLICY_JSON) -> SplitPolicy:
    content = json.loads(Path(path).read_text())
    return SplitPolicy(frozenset(content["test_patient_records"]), frozenset(content["valid_patient_records"]),
                       int(content["unknown_patient_records"]), policy_hash(content))


TRAINING_RECORDS = "training_records.json"


def write_training_records(folder: str | Path, stage: str | None, records: Iterable[int] = (),
                           inherited: Iterable[str | Path | None] = (), policy: SplitPolicy | None = None) -> Path:
    """Record, in a run or checkpoint folder, the policy's hash and the PTB-XL records each stage that made
    it trained on: this stage's ``records`` plus the stages of the ``inherited`` folders (encoder_init,
    init_from, image encoder). ``stage=None`` only merges the inherited folders' stages (shipping a checkpoint
    with its image encoder). A folder trained under another policy cannot be inherited."""
    policy = policy or load_policy()
    stages = inherited_stages(inherited, policy)
    if stage is not None:
        stages.append({"stage": stage, "records": sorted(int(i) for i in records)})
    path = Path(folder) / TRAINING_RECORDS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"split_policy_sha256": policy.sha256, "stages": stages}) + "\n")
    return path


def inherited_stages(inherited: Iterable[str | Path | None], policy: SplitPolicy | None = None) -> list[dict]:
    """The stages recorded by the folders a run starts from (encoder_init, init_from, image encoder), merged;
    raises `PolicyMismatchError` for one trained under another policy (a trainer checks this before step 1)."""
    policy = policy or load_policy()
    stages: list[dict] = []
    for source in inherited:
        if source is None:
            continue
        saved = read_training_records(source)
        if saved is None:
            stages.append({"stage": f"unrecorded ({Path(source).name})", "records": None})
            continue
        if saved["split_policy_sha256"] != policy.sha256:
            raise PolicyMismatchError(f"{source}: trained under split policy {saved['split_policy_sha256'][:12]}, "
                                      f"this run uses {policy.sha256[:12]}; retrain it under the current policy")
        stages += [s for s in saved["stages"] if s not in stages]
    return stages


def read_training_records(folder: str | Path) -> dict | None:
    path = Path(folder) / TRAINING_RECORDS
    return json.loads(path.read_text()) if path.exists() else None


def trained_records(saved: dict | None) -> frozenset[int]:
    """Every record some stage of a `read_training_records` answer recorded training on (none for no answer)."""
    return frozenset(int(i) for s in (saved or {"stages": []})["stages"] if s["records"] for i in s["records"])


def seen_by_checkpoint(folder: str | Path, evaluated: Iterable[int], policy: SplitPolicy | None = None,
                       patients: dict[int, object] | None = None) -> dict:
    """For an evaluation report: how many of its records (and patients' records) any stage of the checkpoint
    in ``folder`` trained on. A checkpoint trained under another policy stops the evaluation; one that
    recorded nothing (made before the policy) is reported as unknown."""
    policy = policy or load_policy()
    evaluated = sorted(set(int(i) for i in evaluated))
    saved = read_training_records(folder)
    if saved is None:
        return {"split_policy": "unrecorded (checkpoint made before the split policy)",
                "records_evaluated": len(evaluated), "records_seen_in_training": None}
    if saved["split_policy_sha256"] != policy.sha256:
        raise PolicyMismatchError(f"{folder}: trained under split policy {saved['split_policy_sha256'][:12]}, "
                                  f"but this evaluation uses {policy.sha256[:12]}; their held-out sets differ")
    unknown = [s["stage"] for s in saved["stages"] if s["records"] is None]
    return {"split_policy": policy.sha256[:12], **policy.seen(evaluated, trained_records(saved), patients),
            "stages_with_unrecorded_records": unknown}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write data/split_policy.json from the official ECG-QA split "
                                                 "files and PTB-XL's ptbxl_database.csv.")
    parser.add_argument("--ecgqa", required=True, help="ECG-QA release folder (ecgqa/ptbxl)")
    parser.add_argument("--ptbxl-database", required=True, help="PTB-XL ptbxl_database.csv")
    parser.add_argument("-o", "--out", default=str(POLICY_JSON))
    args = parser.parse_args()
    content = build_policy(args.ecgqa, args.ptbxl_database)
    Path(args.out).write_text(json.dumps(content) + "\n")
    print(f"wrote {args.out}: {len(content['test_patient_records'])} test-patient and "
          f"{len(content['valid_patient_records'])} valid-patient records, sha256 {policy_hash(content)[:12]}")
