"""Loss targets by construction: for every ECG-QA wording we know (official template and paraphrased questions
in ../shared, every generator template) and every answer of its template, the labelled tokens decode to exactly
the answer and its end-of-turn token, in single-turn, multi-turn and two-ECG prompts. No prompt token is
labelled. (The earlier processor searched the rendered text for the answer and labelled the "no" of "normal".)
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from ecgllm.models.processor import IGNORE_INDEX, EcgProcessor, ProcessorConfig
from tests.conftest import PTBXL_1, SHARED, needs_shared

ECGQA_ROOT = SHARED / "ecgqa/ecgqa/ptbxl"
OFFICIAL_SAMPLE = SHARED / "ecgqa/official_sample"


def labelled_runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each contiguous run of labelled positions."""
    runs, start = [], None
    for i, value in enumerate(labels + [IGNORE_INDEX]):
        if value != IGNORE_INDEX and start is None:
            start = i
        elif value == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def check_targets(processor: EcgProcessor, turns: list[dict[str, str]], tags: list[str],
                  notes: list[str] | None = None) -> None:
    """Every assistant message is labelled as itself + end of turn; nothing else is labelled."""
    ids, labels = processor.encode_for_training(turns, tags, notes)
    eos = processor.tokenizer.eos_token
    answers = [t["content"] for t in turns if t["role"] == "assistant"]
    runs = labelled_runs(labels)
    decoded = [processor.tokenizer.decode(ids[a:b], clean_up_tokenization_spaces=False) for a, b in runs]
    assert decoded == [a + eos for a in answers], (turns, decoded)
    assert all(labels[i] == ids[i] for a, b in runs for i in range(a, b))
    # the whole text is still the chat template's rendering, so training and answering see the same prompt
    rendered = processor.render(turns, tags, add_generation_prompt=False, notes=notes)
    assert processor.tokenizer.decode(ids, clean_up_tokenization_spaces=False) == rendered


def official_wordings() -> dict[int, set[str]]:
    """template_id -> every distinct question text of the official files in ../shared (both variants)."""
    from ecgllm.datasets.ecgqa import ECGQA, read_qa_file

    wordings: dict[int, set[str]] = defaultdict(set)
    qa = ECGQA(ECGQA_ROOT)
    files = [p for split in ("train", "valid") for variant in ("template", "paraphrased") for p in qa.files(split, variant)]
    files += sorted(OFFICIAL_SAMPLE.glob("*.json"))
    for path in files:
        for s in read_qa_file(path):
            wordings[s.template_id].add(s.question)
    return wordings


def generator_wordings() -> dict[int, set[str]]:
    """template_id -> every generator pattern filled with each of its values."""
    from ecgllm.datasets.ecgqa_generator import fill
    from ecgllm.datasets.ecgqa_templates import load_templates

    out: dict[int, set[str]] = defaultdict(set)
    for tid, t in load_templates().items():
        values = list(t.values) or [""]
        for v in values:
            out[tid].add(fill(t.pattern, [v, v], "II" if "${lead}" in t.pattern else None))
    return out


@pytest.fixture(scope="module")
def ecgs():
    from ecgllm import read_ecg

    return [read_ecg(PTBXL_1)]


@pytest.fixture(scope="module")
def real_processor() -> EcgProcessor:
    """The processor of the shipped model family: SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer

    from ecgllm.models.llm import resolve_llm

    return EcgProcessor(AutoTokenizer.from_pretrained(str(resolve_llm(None))), ProcessorConfig(n_ecg_tokens=10))


def test_known_traps(tiny_tokenizer, ecgs):
    """The three wordings that put the old loss on nothing or inside the question, through the training batch."""
    processor = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=3))
    for question, answer in [("Is this a normal ECG?", "no"),
                             ("Does this ECG show symptoms of non-specific st changes?", "no"),
                             ("Which noise does this ECG show, baseline drift or static noise?", "static noise")]:
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        batch = processor([turns], [[ecgs[0]]])
        learned = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]
        assert processor.tokenizer.decode(learned, clean_up_tokenization_spaces=False) == answer + "<|im_end|>"
        check_targets(processor, turns, [""])


@needs_shared
def test_every_official_and_generated_wording_with_every_answer(real_processor):
    from ecgllm.datasets.ecgqa import ECGQA

    answers = ECGQA(ECGQA_ROOT).template_answers()
    wordings = official_wordings()
    assert len(wordings) >= 60, "the official files in ../shared cover at least 60 templates"
    for tid, texts in generator_wordings().items():
        wordings[tid] |= texts
    rng = np.random.default_rng(0)
    checked = 0
    for tid in sorted(wordings):
        classes = answers[tid]
        for question in sorted(wordings[tid]):
            for answer in classes:
                check_targets(real_processor, [{"role": "user", "content": question},
                                               {"role": "assistant", "content": answer}], [""])
                checked += 1
            # a multi-answer, as conversations write it
            if len(classes) > 2:
                pair = ", ".join(sorted(rng.choice(classes, 2, replace=False)))
                check_targets(real_processor, [{"role": "user", "content": question},
                                               {"role": "assistant", "content": pair}], [""])
    assert checked > 10_000


@needs_shared
def test_multi_turn_and_two_ecg_prompts(real_processor, tiny_tokenizer):
    from ecgllm.datasets.ecgqa import ECGQA

    answers = ECGQA(ECGQA_ROOT).template_answers()
    wordings = official_wordings()
    comparison = [t for t in wordings if t >= 43]
    single = [t for t in wordings if t < 43]
    assert comparison and single
    tiny = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2))
    rng = np.random.default_rng(1)
    for processor in (real_processor, tiny):
        for tid in comparison:
            for question in sorted(wordings[tid])[:20]:
                for answer in answers[tid]:
                    check_targets(processor, [{"role": "user", "content": question},
                                              {"role": "assistant", "content": answer}], ["ECG 1 (earlier)", "ECG 2"])
        for _ in range(300):
            t1, t2, t3 = (int(rng.choice(single)) for _ in range(3))
            turns = []
            for t in (t1, t2, t3):
                turns.append({"role": "user", "content": str(rng.choice(sorted(wordings[t])))})
                turns.append({"role": "assistant", "content": str(rng.choice(answers[t]))})
            check_targets(processor, turns, [""])


def test_batch_labels_match_single_encoding(tiny_tokenizer, ecgs):
    """Padding a batch keeps every row's labels; padded positions are never labelled."""
    processor = EcgProcessor(tiny_tokenizer, ProcessorConfig(n_ecg_tokens=2))
    convs = [[{"role": "user", "content": "Is this a normal ECG?"}, {"role": "assistant", "content": "no"}],
             [{"role": "user", "content": "Does this ECG show atrial fibrillation? sinus rhythm normal"},
              {"role": "assistant", "content": "yes"}]]
    batch = processor(convs, [[ecgs[0]], [ecgs[0]]])
    for row, conv in enumerate(convs):
        ids, labels = processor.encode_for_training(conv, [""])
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == labels
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == n
