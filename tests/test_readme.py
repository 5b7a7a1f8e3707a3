"""The README's promises hold: CI runs its test command, and its main-job command works."""

from __future__ import annotations

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


def test_readme_main_job_runs(tmp_path):
    """The ecgllm part of the main-job command (setup is what CI itself just ran): the shipped model answers
    about the bundled record, and the record is rendered."""
    main_job = readme_setup_commands()[0]
    for part in main_job.split(" && ")[1:]:
        args = shlex.split(part.replace("-o ecg.png", f"-o {tmp_path / 'ecg.png'}"))
        result = subprocess.run([str(ROOT / args[0])] + args[1:], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        if args[1] == "ask":
            assert result.stdout.strip(), "the shipped model gave no answer"
    assert (tmp_path / "ecg.png").stat().st_size > 10_000


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
