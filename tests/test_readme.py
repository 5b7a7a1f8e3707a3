"""The README's promises hold: CI runs its test command, and its main-job command works."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must open with a bash block of set-up commands"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_opens_with_exactly_two_setup_commands():
    commands = readme_setup_commands()
    assert len(commands) == 2
    assert all(c.startswith("bash scripts/setup.sh") for c in commands)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert readme_setup_commands()[1] in ci


MEASURED = re.compile(r"  \[ECG 1 measured\] heart_rate=[\d.]+, rr_ms=[\d.]+, .*quality_label=\w+")
TIMING = re.compile(r"  \[\d+\.\d\d s\]")


def stderr_lines(text: str) -> list[str]:
    """What a terminal keeps of stderr: each progress bar's carriage-return redraws end in its last state."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def test_readme_main_job_runs_and_says_only_what_a_user_needs(tmp_path):
    """The ecgllm part of the main-job command (setup is what CI itself just ran), on a first run (the embedded
    LLM is prepared: one line, one bar) and a later one: the answer on stdout; on stderr the measurements and the
    time, and no library's bars, logs or warnings. ``--quiet`` leaves the answer alone."""
    main_job = readme_setup_commands()[0]
    env = dict(os.environ, ECGLLM_CACHE=str(tmp_path / "fresh-cache"))
    llm_folder = tmp_path / "fresh-cache" / "llm" / "smollm2-135m-instruct"
    for run in ("first", "later"):
        for part in main_job.split(" && ")[1:]:
            args = shlex.split(part.replace("-o ecg.png", f"-o {tmp_path / 'ecg.png'}"))
            result = subprocess.run([str(ROOT / args[0])] + args[1:], cwd=ROOT, capture_output=True, text=True,
                                    env=env)
            assert result.returncode == 0, result.stderr
            lines = stderr_lines(result.stderr)
            if args[1] != "ask":
                assert lines == [], result.stderr
                continue
            assert result.stdout.strip(), "the shipped model gave no answer"
            for noise in ("GGUF", "Loading weights", "Writing model shards", "Warning", "warn("):
                assert noise not in result.stderr, result.stderr  # no library's bars, logs or warnings
            if run == "first":
                assert lines[0] == (f"ecgllm: preparing the embedded language model once (SmolLM2-135M-Instruct "
                                    f"-> {llm_folder}, ~30 s)"), result.stderr
                assert "writing safetensors" in result.stderr  # our one bar (it clears itself when done)
                lines = [line for line in lines[1:] if not re.search(r"\d+/4 \[", line)]
            assert len(lines) == 2 and MEASURED.fullmatch(lines[0]) and TIMING.fullmatch(lines[1]), result.stderr
    assert (tmp_path / "ecg.png").stat().st_size > 10_000
    ask = shlex.split(main_job.split(" && ")[1])
    quiet = subprocess.run([str(ROOT / ask[0])] + ask[1:] + ["--quiet"], cwd=ROOT, capture_output=True, text=True,
                           env=env)
    assert quiet.returncode == 0 and quiet.stderr == "" and len(quiet.stdout.strip().splitlines()) == 1


def test_readme_python_api_example_runs(tiny_checkpoint):
    """The README's Python block, with ``checkpoint`` bound to a tiny saved checkpoint."""
    import contextlib
    import io
    import os

    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), {"checkpoint": str(tiny_checkpoint)})
    finally:
        os.chdir(cwd)
    assert out.getvalue().strip()


def test_compare_and_report_say_only_what_a_user_needs():
    """As the main job's `ask`: no library's logs or warnings on stderr, only our measurement and timing lines;
    ``--quiet`` leaves the answer alone."""
    records = [str(ROOT / "tests/fixtures/ptbxl/records100/00000/00001_lr.hea"),
               str(ROOT / "tests/fixtures/ptbxl/records100/00000/00002_lr.hea")]
    ecgllm = str(ROOT / ".venv/bin/ecgllm") if (ROOT / ".venv/bin/ecgllm").exists() else "ecgllm"
    for command in (["compare", *records, "What changed?"], ["report", records[0]]):
        result = subprocess.run([ecgllm, *command], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.strip(), result.stderr
        for noise in ("GGUF", "Loading weights", "Writing model shards", "Warning", "warn(", "Traceback"):
            assert noise not in result.stderr, result.stderr
        lines = stderr_lines(result.stderr)
        assert lines and TIMING.fullmatch(lines[-1]), result.stderr
        assert all(re.fullmatch(r"  \[ECG \d measured\] .+", line) for line in lines[:-1]), result.stderr
        quiet = subprocess.run([ecgllm, *command, "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip(), quiet.stderr


def test_serve_says_where_it_listens_and_nothing_else():
    """`ecgllm serve` with the default model: one line on stdout (address, docs, batching), no library's logs or
    warnings on stderr while it loads, answers and stops on Ctrl-C, and a clean exit."""
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ecgllm = str(ROOT / ".venv/bin/ecgllm") if (ROOT / ".venv/bin/ecgllm").exists() else "ecgllm"
    proc = subprocess.Popen([ecgllm, "serve", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    record = ROOT / "tests/fixtures/ptbxl/records100/00000/00001_lr"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        files = [("ecg", (f"00001_lr{ext}", record.with_suffix(ext).read_bytes())) for ext in (".hea", ".dat")]
        asked = httpx.post(f"http://127.0.0.1:{port}/v1/ask", files=files, data={"question": "Is this a normal ECG?"},
                           timeout=60)
        assert asked.status_code == 200 and asked.json()["answer"], asked.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == "", err
    assert re.fullmatch(rf"ecgllm serving on http://127\.0\.0\.1:{port}/  \(API docs: /docs; \d+ batch(es)? at once, "
                        r"\d+ threads? each\)\n", out), out
