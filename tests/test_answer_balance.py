"""Equal yes and no answers per verify question wording (`ecgllm data balance`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from ecgllm.datasets.answer_balance import balance_verify_answers


def conversation(template: int, answer: str, qtype: str = "single-verify", i: int = 0, wording: str = "") -> dict:
    return {"id": f"{template}-{answer}-{i}", "ecgs": [{"record_id": i, "tag": ""}],
            "turns": [{"role": "user", "content": wording or f"question {template}"},
                      {"role": "assistant", "content": answer}],
            "meta": {"template_id": template, "question_type": qtype}}


def answers_by_template(rows: list[dict]) -> Counter:
    return Counter((r["meta"]["template_id"], r["turns"][-1]["content"]) for r in rows)


def test_the_rarer_answer_is_repeated_until_both_are_equal_and_nothing_is_dropped():
    rows = ([conversation(26, "no", i=i) for i in range(9)] + [conversation(26, "yes", i=i) for i in range(4)]
            + [conversation(2, "yes", i=i) for i in range(3)] + [conversation(2, "no", i=i) for i in range(3)]
            + [conversation(8, "sinus rhythm", "single-query", i) for i in range(5)]
            + [conversation(1, "not sure", i=0), conversation(1, "yes", i=1)]
            + [conversation(65, "no", "comparison_irrelevant-verify", i) for i in range(4)])
    balanced, summary = balance_verify_answers(rows, seed=1)
    assert balanced[:len(rows)] == rows
    counts = answers_by_template(balanced)
    assert counts[(26, "yes")] == counts[(26, "no")] == 9
    assert counts[(2, "yes")] == counts[(2, "no")] == 3
    assert counts[(8, "sinus rhythm")] == 5 and counts[(1, "not sure")] == 1  # other questions, other answers
    assert counts[(1, "yes")] == 1 and counts[(65, "no")] == 4                  # one answer only: unchanged
    assert summary[26] == {"yes": 4, "no": 9, "added": 5}
    repeated = Counter(r["id"].split("-repeat-")[0] for r in balanced[len(rows):] if r["meta"]["template_id"] == 26)
    assert set(repeated) == {f"26-yes-{i}" for i in range(4)} and max(repeated.values()) == 2  # spread over them
    assert len({r["id"] for r in balanced}) == len(balanced)  # copies get ids of their own (resumable runs)
    balanced[-1]["turns"][0]["content"] = "edited"
    assert all(r["turns"][0]["content"] != "edited" for r in rows)  # copies, not the same objects


def test_each_wording_is_balanced_on_its_own():
    static = "Does this ECG show static noise in lead V3?"
    electrodes = "Does this ECG show electrodes problems in lead V3?"
    rows = ([conversation(26, "yes", i=i, wording=static) for i in range(3)]
            + [conversation(26, "no", i=i, wording=static) for i in range(3)]
            + [conversation(26, "no", i=i, wording=electrodes) for i in range(4)]
            + [conversation(26, "yes", i=9, wording=electrodes)])
    balanced, summary = balance_verify_answers(rows, seed=0)
    by_wording = Counter((r["turns"][0]["content"], r["turns"][-1]["content"]) for r in balanced)
    assert by_wording[(static, "yes")] == 3  # already balanced: a per-template count would have added to it
    assert by_wording[(electrodes, "yes")] == by_wording[(electrodes, "no")] == 4
    assert summary[26] == {"yes": 4, "no": 7, "added": 3}


def test_repeats_are_capped_so_one_conversation_is_not_learned_by_heart():
    rows = [conversation(35, "no", i=i) for i in range(30)] + [conversation(35, "yes", i=0)]
    balanced, summary = balance_verify_answers(rows, seed=0, max_repeats=3)
    assert answers_by_template(balanced)[(35, "yes")] == 4 and summary[35]["added"] == 3


def test_the_command_writes_the_balanced_file_and_says_what_it_did(tmp_path):
    source = tmp_path / "mix.jsonl"
    rows = [conversation(26, "no", i=i) for i in range(5)] + [conversation(26, "yes", i=9)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "balanced.jsonl"
    done = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "data", "balance", str(source), "-o", str(out),
                           "--max-repeats", "10"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "template 26: yes     1, no     5, repeated     4" in done.stdout
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert answers_by_template(written)[(26, "yes")] == 5
    missing = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "data", "balance", str(tmp_path / "no.jsonl"),
                              "-o", str(out)], capture_output=True, text=True)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr and "no.jsonl" in missing.stderr
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    bad = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "data", "balance", str(tmp_path / "bad.jsonl"),
                          "-o", str(out)], capture_output=True, text=True)
    assert bad.returncode == 3 and "line 2: not JSON" in bad.stderr and "internal error" not in bad.stderr
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"meta": None, "turns": [{"role": "user"}]}, {"meta": ["x"], "turns": 3}, {"meta": {"template_id": 26}})))
    odd = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "data", "balance", str(tmp_path / "odd.jsonl"),
                          "-o", str(out)], capture_output=True, text=True)
    assert odd.returncode == 0 and "0 repeated" in odd.stdout  # not a verify conversation: kept as it is
    negative = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "data", "balance", str(source), "-o",
                               str(out), "--max-repeats", "-1"], capture_output=True, text=True)
    assert negative.returncode == 2 and "--max-repeats" in negative.stderr
    folder = tmp_path / "folder"
    (folder / "inside").mkdir(parents=True)
    unwritable = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "data", "balance", str(source), "-o",
                                 str(folder)], capture_output=True, text=True)  # a folder, not a file
    assert unwritable.returncode == 4 and "cannot write" in unwritable.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mix.jsonl", "balanced.jsonl", "bad.jsonl",
                                                                 "odd.jsonl", "folder"])  # no .tmp left
    cli = [sys.executable, "-m", "ecgllm.serving.cli", "data", "balance"]
    once = subprocess.run(cli + [str(source), "-o", str(tmp_path / "once.jsonl"), "--max-repeats", "2"],
                          capture_output=True, text=True)
    again = subprocess.run(cli + [str(tmp_path / "once.jsonl"), "-o", str(tmp_path / "twice.jsonl"), "--seed", "3"],
                           capture_output=True, text=True)
    assert once.returncode == again.returncode == 0, again.stderr
    ids = [json.loads(line)["id"] for line in (tmp_path / "twice.jsonl").read_text().splitlines()]
    assert len(ids) == 8 + 2 and len(ids) == len(set(ids))  # balancing a balanced file again: ids stay unique
