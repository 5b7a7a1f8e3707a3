"""Prompt -> generate -> decode for a batch of questions: the one loop behind served answers
(`ecgllm.serving.assistant`) and evaluation runs (`ecgllm.evaluation.runner`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Sequence

import torch

from ecgllm.models.placement import to_model_device

YES_WORDS = ("yes", "Yes", " yes", " Yes")
NO_WORDS = ("no", "No", " no", " No")


@dataclass
class GeneratedAnswers:
    texts: list[str]                   # each row's answer, special tokens left out, stripped
    p_yes: list[float] | None = None   # P(yes) / (P(yes) + P(no)) at the first answer token, when asked for


def first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The first token of each spelling of a word (with and without a leading space or capital)."""
    return sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})


def prompt_batch(model, processor, questions: Sequence[str], ecg_lists: Sequence[list], tags: Sequence[list[str]]) -> dict:
    """The model's inputs for single-turn questions, each with its ECGs and their tags, on the model's device."""
    turns = [[{"role": "user", "content": q}] for q in questions]
    return to_model_device(processor(turns, list(ecg_lists), tags=list(tags), train=False), model)


@torch.no_grad()
def generate_answers(model, processor, questions: Sequence[str], ecg_lists: Sequence[list], tags: Sequence[list[str]],
                     max_new_tokens: int, *, yes_no: bool = False, limits: Sequence[int] | None = None,
                     tokenizer_lock: ContextManager | None = None, batch: dict | None = None,
                     **generate_kwargs) -> GeneratedAnswers:
    """Greedy answers (by default) of a batch of single-turn questions, each with its ECGs (signals or pictures)
    and their tags. ``yes_no``: also P(yes) against P(no) at the first answer token (the verify questions' score);
    ``limits``: each row's own token limit (its answer is cut there, as a generation with that limit would end:
    greedy rows do not depend on each other); ``tokenizer_lock``: held while tokenising and decoding (a tokenizer
    shared by threads); ``batch``: the inputs, when the caller built them already (`prompt_batch`);
    ``generate_kwargs`` go to `generate` (stopping criteria, a streamer, ``max_time``)."""
    lock = tokenizer_lock if tokenizer_lock is not None else contextlib.nullcontext()
    tokenizer = processor.tokenizer
    if batch is None:
        with lock:
            batch = prompt_batch(model, processor, questions, ecg_lists, tags)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         output_scores=yes_no, return_dict_in_generate=yes_no, **generate_kwargs)
    sequences = out.sequences if yes_no else out
    rows = [row[:limit] for row, limit in zip(sequences, limits)] if limits else list(sequences)
    with lock:
        texts = [t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]
        if not yes_no:
            return GeneratedAnswers(texts)
        yes_ids, no_ids = first_token_ids(tokenizer, YES_WORDS), first_token_ids(tokenizer, NO_WORDS)
    first = torch.softmax(out.scores[0].float(), dim=-1)
    p_yes = first[:, yes_ids].sum(-1)
    p_no = first[:, no_ids].sum(-1)
    return GeneratedAnswers(texts, (p_yes / (p_yes + p_no).clamp(min=1e-12)).tolist())
