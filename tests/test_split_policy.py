"""The split policy: ECG-QA valid/test patients' records never reach weight training, and every checkpoint says
what it trained on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecgllm.datasets.split_policy import (ForbiddenRecordsError, PolicyMismatchError, build_policy, load_policy,
                                          policy_hash, read_training_records, seen_by_checkpoint,
                                          write_training_records)
from tests.conftest import SHARED, needs_shared

CLI = [sys.executable, "-m", "ecgllm.serving.cli"]


@needs_shared
def test_the_shipped_policy_is_the_one_the_official_files_give():
    built = build_policy(SHARED / "ecgqa/ecgqa/ptbxl", SHARED / "ptbxl/ptbxl_database.csv")
    policy = load_policy()
    assert policy_hash(built) == policy.sha256
    assert set(built["test_patient_records"]) == policy.test_patient_records
    # by patient, not by id: test patients own more PTB-XL records than ECG-QA's test list names
    from ecgllm.datasets.ecgqa import ECGQA

    qa = ECGQA(SHARED / "ecgqa/ecgqa/ptbxl")
    assert qa.split_ecg_ids("test") < policy.test_patient_records
    assert qa.split_ecg_ids("valid") <= policy.valid_patient_records
    assert not (qa.split_ecg_ids("train") & policy.fit_forbidden)


def test_refuse_names_the_source_and_counts():
    policy = load_policy()
    test_id = min(policy.test_patient_records)
    valid_id = min(policy.valid_patient_records)
    with pytest.raises(ForbiddenRecordsError, match=r"data.jsonl: 2 records .*1 of test patients, 1 of valid"):
        policy.refuse([3, test_id, valid_id], source="data.jsonl", stage="instruction")
    policy.refuse([3, 6], source="data.jsonl", stage="instruction")  # ECG-QA train patients pass


def test_training_records_are_inherited_and_a_foreign_policy_is_refused(tmp_path):
    policy = load_policy()
    write_training_records(tmp_path / "enc", "encoder_pretraining", [3, 6, 8])
    write_training_records(tmp_path / "llm", "instruction", [6, 11], inherited=[tmp_path / "enc", None])
    saved = read_training_records(tmp_path / "llm")
    assert saved["split_policy_sha256"] == policy.sha256
    assert [s["stage"] for s in saved["stages"]] == ["encoder_pretraining", "instruction"]
    seen = seen_by_checkpoint(tmp_path / "llm", [3, 11, 12], patients={3: "a", 11: "b", 12: "b", 6: "c"})
    assert seen["records_evaluated"] == 3 and seen["records_seen_in_training"] == 2
    assert seen["patients_evaluated"] == 2 and seen["patients_seen_in_training"] == 2
    assert seen_by_checkpoint(tmp_path / "nothing", [1])["records_seen_in_training"] is None
    foreign = tmp_path / "foreign"
    write_training_records(foreign, "instruction", [3])
    data = json.loads((foreign / "training_records.json").read_text())
    data["split_policy_sha256"] = "0" * 64
    (foreign / "training_records.json").write_text(json.dumps(data))
    with pytest.raises(PolicyMismatchError, match="split policy 000000000000"):
        seen_by_checkpoint(foreign, [1])
    with pytest.raises(PolicyMismatchError):
        write_training_records(tmp_path / "next", "instruction", [3], inherited=[foreign])


def test_a_recipe_whose_data_holds_a_test_patient_stops_with_exit_3(tmp_path, tiny_tokenizer):
    """The LLM trainer refuses before it builds anything, naming the file and the count."""
    import yaml

    from ecgllm.datasets.conversation import Conversation, ECGRef, Turn, write_jsonl
    from tests.conftest import make_training_workspace

    ws = make_training_workspace(tmp_path, tiny_tokenizer, n_conversations=4)
    leaked = Conversation("x", [ECGRef("ptbxl", 1)], [Turn("user", "Is this a normal ECG?"), Turn("assistant", "yes")])
    rows = [json.loads(line) for line in (ws / "train.jsonl").read_text().splitlines()]
    write_jsonl([Conversation.from_dict(r) for r in rows] + [leaked], ws / "leaky.jsonl")
    recipe = {"stage": "instruction", "output_dir": str(tmp_path / "run"),
              "data": {"train": str(ws / "leaky.jsonl"), "ecg_cache": str(ws / "cache")},
              "model": {"llm": str(ws / "tiny-llm"), "encoder_kwargs": {"widths": [8, 16], "n_tokens": 2}},
              "optim": {"max_steps": 1, "batch_size": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run(CLI + ["train", str(tmp_path / "r.yaml"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "leaky.jsonl: 1 records of ECG-QA held-out patients (1 of test patients" in result.stderr
    assert not (tmp_path / "run" / "final").exists()


def test_training_data_with_a_held_out_paraphrase_is_refused_with_its_line(tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from ecgllm.datasets.ecgqa_templates import HeldOutWordingError, load_templates
    from ecgllm.training.data import ConversationDataset

    t = load_templates()[2]  # "Is this a normal ECG?": its wordings are questions as they stand

    def row(question: str) -> str:
        return json.dumps({"id": question, "ecgs": [{"dataset": "ptbxl", "record_id": 3, "tag": "ECG 1"}],
                           "turns": [{"role": "user", "content": question}, {"role": "assistant", "content": "no"}],
                           "meta": {"task": "ecgqa", "template_id": 2}})

    cache = SimpleNamespace(index=pd.DataFrame({"ecg_id": [3]}), path=tmp_path)
    allowed = tmp_path / "allowed.jsonl"
    allowed.write_text("\n".join(row(q) for q in (t.pattern, *t.trained_paraphrases)) + "\n")
    assert len(ConversationDataset(allowed, cache)) == 1 + len(t.trained_paraphrases)
    held = tmp_path / "held.jsonl"
    held.write_text("\n".join([row(t.pattern), row(t.held_out_paraphrases[0])]) + "\n")
    with pytest.raises(HeldOutWordingError, match=r"held.jsonl: 1 ECG-QA questions .* line 2"):
        ConversationDataset(held, cache)


def test_the_policy_guard_on_ptbxl_arrays_names_the_stage_that_asked(tmp_path, monkeypatch):
    """`load_ptbxl_arrays` serves the encoder, contrastive, label-head, image-quality and distillation stages; its
    guard's sentence names the one that loaded the records, not always the encoder."""
    from ecgllm.datasets import PTBXL
    from ecgllm.datasets.cache import build_cache
    from ecgllm.signal import PrepConfig
    from ecgllm.training import pretrain_encoder
    from tests.conftest import FIXTURES

    ptbxl = PTBXL.load(FIXTURES / "ptbxl")
    paths = [ptbxl.record_path(i, prefer_fs=100) for i in ptbxl.ecg_ids]
    cache = build_cache(paths, ptbxl.table[["strat_fold"]].reset_index(), tmp_path / "cache",
                        PrepConfig(fs=100.0, bandpass=None, window_s=10.0), "test", workers=1, progress=False)

    class EveryRecordForbidden:  # the filter lets every record through, the guard refuses them all
        fit_forbidden: set = set()
        sha256 = "0" * 64

        def refuse(self, record_ids, source, stage):
            raise ForbiddenRecordsError(f"{source}: {len(list(record_ids))} records in the {stage} stage")

    monkeypatch.setattr(pretrain_encoder, "load_policy", EveryRecordForbidden)
    for stage in ("encoder_contrastive", "image_distillation"):
        with pytest.raises(ForbiddenRecordsError, match=f"in the {stage} stage"):
            pretrain_encoder.load_ptbxl_arrays(str(cache), str(FIXTURES / "ptbxl"), "mv", stage=stage)
