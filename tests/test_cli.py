"""The `ecgllm` command as a shell user sees it: output, JSON, files, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ecgllm.serving.cli import EXIT_INPUT, EXIT_OK, EXIT_USAGE, bundled_example, main
from tests.conftest import FIXTURES, PTBXL_1


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", *args], capture_output=True, text=True)


def test_info_table_on_bundled_example(capsys):
    assert main(["info", str(bundled_example())]) == EXIT_OK
    out = capsys.readouterr().out
    for text in ("12: I, II, III, aVR", "100 Hz, 1000 samples, 10.00 s", "Heart rate", "bpm",
                 "P / PR / QRS / QT", "Bazett", "Fridericia", "QRS axis", "(normal)", "Quality"):
        assert text in out


def test_info_json_has_heart_rate_and_fs(capsys):
    assert main(["info", str(PTBXL_1), "--json"]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["fs"] == 100.0 and 55 < info["heart_rate"] < 75
    assert info["axis_category"] == "normal" and len(info["amplitudes"]) == 12


def test_info_reports_quality_warnings(tmp_path, capsys):
    from ecgllm import read_ecg

    x = read_ecg(PTBXL_1).signal
    x[6] = 0
    np.save(tmp_path / "v1off.npy", x)
    assert main(["info", str(tmp_path / "v1off.npy"), "--fs", "100"]) == EXIT_OK
    assert "V1 (flat-lined)" in capsys.readouterr().out


def test_info_hints_for_csv(tmp_path, capsys):
    from ecgllm import read_ecg

    x = read_ecg(PTBXL_1).signal
    np.savetxt(tmp_path / "two.csv", x[:2].T, delimiter=",", fmt="%.4f")
    assert main(["info", str(tmp_path / "two.csv"), "--fs", "100", "--leads", "I,II", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["leads"] == ["I", "II"]


def test_info_by_record_id_in_dataset_folder(capsys):
    assert main(["info", str(FIXTURES / "ptbxl"), "--record-id", "2", "--json", "--no-measure"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["fs"] == 100.0


def test_plot_writes_png_at_paper_proportions(tmp_path):
    out = tmp_path / "ecg.png"
    assert main(["plot", str(PTBXL_1), "-o", str(out), "--no-measure"]) == EXIT_OK
    width, height = Image.open(out).size
    # 10 s at 25 mm/s = 250 mm (~9.8 in) of trace plus margins, 12 rows of 30 mm.
    assert 900 < width < 1300 and height > width


def test_plot_holter_window(tmp_path):
    out = tmp_path / "strip.png"
    assert main(["plot", str(FIXTURES / "mitdb/208.hea"), "--start", "5", "--seconds", "4", "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_bad_file_exit_code_and_message_without_traceback(tmp_path):
    bad = tmp_path / "broken.hea"
    bad.write_text("garbage\n")
    result = run("info", str(bad))
    assert result.returncode == EXIT_INPUT
    assert result.stderr.startswith("error: ") and "broken.hea" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run("plot", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "x.png"))
    assert missing.returncode == EXIT_INPUT and "does not exist" in missing.stderr


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("plot", str(PTBXL_1), "-o", str(blocker / "sub" / "x.png"), "--no-measure")
    assert result.returncode == 4 and "cannot write" in result.stderr


@pytest.mark.parametrize("command", [[], ["info"], ["plot"]])
def test_help_teaches_with_examples(command):
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "exit codes:" in result.stdout


def test_usage_errors():
    assert run().returncode == EXIT_USAGE
    assert run("info").returncode == EXIT_USAGE
    assert run("plot", str(PTBXL_1)).returncode == EXIT_USAGE  # -o is required


def test_console_script_installed():
    import shutil

    exe = shutil.which("ecgllm") or str(sys.executable).replace("python", "ecgllm")
    result = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("ecgllm ")


def test_ask_refuses_an_over_long_question_and_neutralises_ecg_tokens(tiny_checkpoint):
    """The CLI side of the server's 422s: a question over the model's context is exit 3 with a sentence, never a
    traceback; `<ecg>` typed in a question creates no ECG slot, so the answer comes as usual."""
    long_question = "Does this ECG show atrial fibrillation? " * 300
    result = run("ask", str(PTBXL_1), long_question, "--model", str(tiny_checkpoint), "--max-new-tokens", "2")
    assert result.returncode == EXIT_INPUT and "shorten the question" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    result = run("ask", str(PTBXL_1), "<ecg><ecg> Is this <|im_start|>normal?", "--model", str(tiny_checkpoint),
                 "--max-new-tokens", "2", "--quiet")
    assert result.returncode == EXIT_OK and "Traceback" not in result.stderr, result.stderr


def test_the_eval_commands_offer_the_modalities_the_evaluations_take():
    import subprocess
    import sys

    from ecgllm.evaluation.ecgqa_eval import MODALITIES
    from ecgllm.serving import cli_eval

    assert cli_eval.MODALITIES == MODALITIES
    for command in ("ecgqa", "ecgbench"):
        shown = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "eval", command, "--help"],
                               capture_output=True, text=True).stdout
        assert "{signal,image,image-augmented}" in shown
