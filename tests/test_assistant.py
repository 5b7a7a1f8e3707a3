"""Python API and the ask / compare / report / batch commands, on a tiny saved checkpoint and real ECG files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import FIXTURES, PTBXL_1

PTBXL_2 = FIXTURES / "ptbxl/records100/00000/00002_lr.hea"
DICOM = FIXTURES / "dicom/waveform_ecg.dcm"
CLI = [sys.executable, "-m", "ecgllm.serving.cli"]


@pytest.fixture(scope="module")
def assistant(tiny_checkpoint):
    from ecgllm import ECGAssistant

    return ECGAssistant.load(tiny_checkpoint)


def test_ask_returns_text_measurements_and_timing(assistant):
    answer = assistant.ask(PTBXL_1, "Does this ECG show atrial fibrillation?", max_new_tokens=4)
    assert isinstance(answer.text, str)
    assert 40 < answer.measurements[0]["heart_rate"] < 120  # a real sinus-rhythm record
    assert answer.timing["total_s"] >= answer.timing["generate_s"] > 0


def test_compare_report_and_stream(assistant):
    answer = assistant.compare(PTBXL_1, DICOM, "What changed?", max_new_tokens=4)
    assert len(answer.measurements) == 2
    assert assistant.report(PTBXL_2, max_new_tokens=4).question.startswith("Write")
    pieces = list(assistant.stream(PTBXL_1, "Is this a normal ECG?", max_new_tokens=4))
    assert all(isinstance(p, str) for p in pieces)


def streamed(assistant, ecg, question: str) -> dict:
    """Consume ``assistant.stream`` in a thread: its text, or the error it raised, or {} if it hangs."""
    import threading

    result: dict = {}

    def consume() -> None:
        try:
            result["text"] = "".join(assistant.stream(ecg, question, max_new_tokens=2))
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            result["error"] = exc

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(60)
    return result


def test_a_stream_that_cannot_be_answered_raises_instead_of_hanging(assistant, monkeypatch):
    from PIL import Image

    from ecgllm.io.image import ECGImage
    from ecgllm.models.processor import ImageNotSupportedError

    picture = ECGImage(Image.new("RGB", (200, 100), "white"), {"source": "blank"})
    assert isinstance(streamed(assistant, picture, "Is this a normal ECG?").get("error"), ImageNotSupportedError)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(assistant.model, "generate", broken)  # fails inside the generating thread
    error = streamed(assistant, PTBXL_1, "Is this a normal ECG?").get("error")
    assert isinstance(error, RuntimeError) and "out of memory" in str(error)


def test_batched_answers_equal_one_by_one_answers_in_the_given_order(assistant):
    items = [(PTBXL_1, "Is this a normal ECG?"), ([PTBXL_1, PTBXL_2], "What changed?"),
             (DICOM, "Does this ECG show symptoms of atrial fibrillation?")]
    batched = assistant.ask_batch(items, batch_size=3, max_new_tokens=4)
    single = [assistant.ask(PTBXL_1, items[0][1], 4, measure=False),
              assistant.compare(PTBXL_1, PTBXL_2, items[1][1], 4, measure=False),
              assistant.ask(DICOM, items[2][1], 4, measure=False)]
    assert [a.question for a in batched] == [q for _, q in items]
    assert [a.text for a in batched] == [a.text for a in single]


def test_bad_inputs_are_clear_errors(assistant, tmp_path):
    from ecgllm.io.errors import ECGReadError

    with pytest.raises(ValueError, match="empty"):
        assistant.ask(PTBXL_1, "   ")
    bad = tmp_path / "x.csv"
    bad.write_text("not,an\necg,file\n")
    with pytest.raises(ECGReadError):
        assistant.ask(bad, "Is this normal?")


def test_cli_ask_compare_report(tiny_checkpoint, tmp_path):
    result = subprocess.run(CLI + ["ask", str(PTBXL_1), "Is this a normal ECG?", "--model", str(tiny_checkpoint),
                                   "--json", "--max-new-tokens", "4"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert {"text", "measurements", "timing"} <= set(answer)
    assert answer["timing"]["total_s"] >= answer["timing"]["read_s"] > 0  # read by the CLI, before the model loads
    result = subprocess.run(CLI + ["compare", str(PTBXL_1), str(PTBXL_2), "--model", str(tiny_checkpoint),
                                   "--max-new-tokens", "4"], capture_output=True, text=True)
    assert result.returncode == 0 and "[ECG 2 measured]" in result.stderr
    result = subprocess.run(CLI + ["report", str(PTBXL_1), "-o", str(tmp_path / "r.md"), "--model",
                                   str(tiny_checkpoint), "--max-new-tokens", "4"], capture_output=True, text=True)
    assert result.returncode == 0 and "## Measurements" in (tmp_path / "r.md").read_text()

    # The file is read before the model: a broken file is named even when the checkpoint would fail too.
    result = subprocess.run(CLI + ["ask", str(tmp_path / "missing.hea"), "Is this normal?", "--model",
                                   str(tmp_path / "no_checkpoint")], capture_output=True, text=True)
    assert result.returncode == 3 and "missing.hea" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(CLI + ["ask", str(PTBXL_1), "  ", "--model", str(tiny_checkpoint)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "the question is empty" in result.stderr


def test_batch_killed_midway_resumes_without_losing_or_duplicating_lines(tiny_checkpoint, tmp_path):
    questions = tmp_path / "q.jsonl"
    rows = [{"id": f"q{i}", "ecg": str(PTBXL_1 if i % 2 else PTBXL_2), "question": f"Question number {i}?"}
            for i in range(40)]
    rows.append({"id": "broken", "ecg": str(tmp_path / "nope.hea"), "question": "Is this normal?"})
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "a.jsonl"
    cmd = CLI + ["batch", str(questions), "-o", str(out), "--model", str(tiny_checkpoint), "--batch-size", "2",
                 "--max-new-tokens", "24", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(out.read_text().splitlines())
    assert 0 < partial < len(rows), "the run should be killed midway"
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    ids = [line["id"] for line in lines]
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == len(set(ids))
    assert "error" in next(line for line in lines if line["id"] == "broken")


def test_batch_names_the_line_with_an_empty_question(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"ecg": str(PTBXL_1), "question": "Is this normal?"}) + "\n"
                         + json.dumps({"ecg": str(PTBXL_1), "question": " "}) + "\n")
    result = subprocess.run(CLI + ["batch", str(questions), "-o", str(tmp_path / "a.jsonl"), "--model",
                                   str(tmp_path / "no_checkpoint")], capture_output=True, text=True)
    assert result.returncode == 3 and "q.jsonl:2:" in result.stderr and "Traceback" not in result.stderr


def test_a_model_is_named_from_its_metadata_or_else_its_folder(tiny_checkpoint, tmp_path):
    import json
    import shutil

    from ecgllm.models.default import default_checkpoint
    from ecgllm.serving.assistant import model_identity

    assert model_identity(tiny_checkpoint)[0] == "tiny-test-model"
    assert model_identity(default_checkpoint())[0] == "ecgllm-default"
    older = tmp_path / "paired" / "final"  # written before folders recorded a name
    shutil.copytree(tiny_checkpoint, older)
    meta = json.loads((older / "config.json").read_text())
    del meta["name"]
    (older / "config.json").write_text(json.dumps(meta))
    assert model_identity(older) == ("paired/final", meta["ecgllm_version"])
