"""`EcgProcessor`: tokenizer + chat template + the ECG preparation a checkpoint was trained with.

It renders conversations with the tokenizer's chat template, introduces each ECG by a short tag and one
``<ecg>`` placeholder that it expands into ``n_ecg_tokens`` placeholder tokens (the model swaps them for
projected encoder tokens), and masks the loss to assistant tokens. Saved next to the weights, so the
preparation of inputs can never drift from the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ecgllm.datasets.conversation import ecg_slot, ecg_tags
from ecgllm.errors import InputError
from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG
from ecgllm.models.label_tokens import find_named_labels
from ecgllm.models.measurement_note import (NOTE_VERSIONS, asks_for_measurements, comparison_note, measurement_note,
                                            measurements_of)
from ecgllm.models.statement_note import META_KEY as STATEMENTS_KEY
from ecgllm.models.statement_note import STATEMENT_NOTE_VERSIONS, statement_comparison_note
from ecgllm.signal.prepare import PrepConfig, PreparedECG, prepare

ECG_TOKEN = "<ecg>"
IGNORE_INDEX = -100


class ImageNotSupportedError(InputError):
    """An ECG image was given to a checkpoint without an image encoder."""


class PromptTooLongError(InputError, ValueError):
    """A conversation longer than the model's context (``ProcessorConfig.max_length``)."""


@dataclass
class ProcessorConfig:
    prep: dict = field(default_factory=lambda: PrepConfig().to_dict())
    n_ecg_tokens: int = 16
    ecg_token: str = ECG_TOKEN
    system_prompt: str | None = "You are a careful assistant that reads electrocardiograms."
    max_length: int = 1024
    image: dict | None = None       # {"height", "width"} of the image encoder's input; None: signals only
    named_slots: int = 0            # named-label tokens per ECG (`ecgllm.models.label_tokens`)
    named_labels: list[str] | None = None  # the label names looked for in the question, in the classifier's order
    measurement_note: int = 0  # each ECG's measured intervals as text when the question asks about them: the
    # note's version (`measurement_note.NOTE_VERSIONS`), 0 for none (a checkpoint's `true` reads as version 1)
    statement_note: int = 0  # for two ECGs, the classifier's statements new, gone and still present, as text: the
    # note's version (`statement_note.STATEMENT_NOTE_VERSIONS`), 0 for none


def first_question(turns: list[dict[str, str]]) -> str:
    """The first user message: the question the ECGs come with (named labels and measurement notes read it)."""
    return next((t["content"] for t in turns if t["role"] == "user"), "")


class EcgProcessor:
    def __init__(self, tokenizer, config: ProcessorConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        if config.measurement_note and config.measurement_note not in NOTE_VERSIONS:
            raise ValueError(f"measurement_note {config.measurement_note!r}: this package writes notes of versions "
                             f"{sorted(NOTE_VERSIONS)} (0: none)")
        if config.statement_note and config.statement_note not in STATEMENT_NOTE_VERSIONS:
            raise ValueError(f"statement_note {config.statement_note!r}: this package writes statement notes of "
                             f"versions {sorted(STATEMENT_NOTE_VERSIONS)} (0: none)")
        # reads the statements of ECGs the caller did not hand over (`statement_note.attach_statement_reader`)
        self.statement_reader: Callable[[Sequence[ECG | PreparedECG | ECGImage]], list[list[str]]] | None = None
        self.prep = PrepConfig.from_dict(config.prep)
        if config.ecg_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [config.ecg_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.ecg_token_id = tokenizer.convert_tokens_to_ids(config.ecg_token)
        # strings the tokenizer turns into one special id: neutralised in user text (`_inert`)
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
        self._special_strings = sorted({t for t in [*tokenizer.all_special_tokens, *added] if len(t) > 1})

    # ------------------------------------------------------------------------------------ ECGs
    def prepare_ecgs(self, ecgs: Sequence[ECG | PreparedECG]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(signals [E, leads, T], lead_mask [E, leads])`` prepared exactly as the checkpoint expects."""
        prepared = [e if isinstance(e, PreparedECG) else prepare(e, self.prep) for e in ecgs]
        if not prepared:
            n = len(self.prep.leads)
            return torch.zeros(0, n, self.prep.n_samples or 0), torch.zeros(0, n, dtype=torch.bool)
        signals = torch.from_numpy(np.stack([p.signal for p in prepared])).float()
        masks = torch.from_numpy(np.stack([p.mask for p in prepared]))
        return signals, masks

    # ------------------------------------------------------------------------------------ text
    def _messages(self, turns: list[dict[str, str]], tags: Sequence[str],
                  notes: Sequence[str] | None = None) -> list[dict[str, str]]:
        """The chat messages: system prompt, then each ECG's tag and ``<ecg>`` (and its measurement note, if any)
        before the first question."""
        slots = [ecg_slot(tag, self.config.ecg_token) for tag in tags]
        if notes:
            slots = [f"{slot} {note}" if note else slot for slot, note in zip(slots, notes, strict=True)]
        intro = "\n".join(slots)
        messages = [{**m, "content": self._inert(m["content"])} for m in turns]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        if intro:
            messages[first_user]["content"] = f"{intro}\n{messages[first_user]['content']}"
        if self.config.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        return messages

    def _inert(self, text: str) -> str:
        """User (and answer) text with every special token made plain text: a question that contains "<ecg>" or
        "<|im_end|>" must not create an ECG slot or end its turn. A zero-width space after the first character
        leaves the words readable and splits the token."""
        for token in self._special_strings:
            if token in text:
                text = text.replace(token, token[0] + "\u200b" + token[1:])
        return text

    def _template(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _expand(self, text: str) -> str:
        return text.replace(self.config.ecg_token, self.config.ecg_token * self.config.n_ecg_tokens)

    def render(self, turns: list[dict[str, str]], tags: Sequence[str], add_generation_prompt: bool,
               notes: Sequence[str] | None = None) -> str:
        """Chat-template text with each ECG's tag and an expanded ``<ecg>`` span before the first question."""
        return self._expand(self._template(self._messages(turns, tags, notes), add_generation_prompt))

    def notes(self, turns: list[dict[str, str]], ecgs: Sequence[ECG | PreparedECG | ECGImage]) -> list[str] | None:
        """Each ECG's notes: its measurement note (`ecgllm.models.measurement_note`) when the checkpoint reads them
        and the question asks about a measurement (an ECG image gets none: its signal is not known), and for two
        ECGs the classifier's statement comparison (`ecgllm.models.statement_note`) when the checkpoint reads it."""
        rows = None
        if self.wants_notes(turns, len(ecgs)):
            rows = [None if isinstance(e, ECGImage) else measurements_of(e.signal, e.fs, e.leads, e.meta) for e in ecgs]
        statements = self.statements_of(ecgs) if self.wants_statement_note(turns, len(ecgs)) else None
        return self.notes_of_rows(rows, statements) if rows is not None or statements is not None else None

    def notes_of_rows(self, rows: Sequence[Mapping[str, object] | None] | None,
                      statements: Sequence[Sequence[str]] | None = None) -> list[str]:
        """The notes of ECGs with these measurement rows (None: a picture, which gets none; ``rows`` None: no
        measurement notes); from version 3 the second of two measured ECGs also gets the serial comparison with the
        first. ``statements``: each ECG's classifier statements, for the statement comparison the second of two
        ECGs gets."""
        n = len(rows) if rows is not None else len(statements or ())
        notes = [""] * n if rows is None else ["" if row is None else measurement_note(row, self.note_version)
                                               for row in rows]
        if rows is not None and self.note_version >= 3 and len(rows) == 2 and None not in rows:
            notes[1] += " " + comparison_note(rows[0], rows[1])
        if statements is not None and len(statements) == 2:
            notes[1] = (notes[1] + " " if notes[1] else "") + statement_comparison_note(*statements)
        return notes

    def wants_statement_note(self, turns: list[dict[str, str]], n_ecgs: int) -> bool:
        """Does this conversation get the statement comparison (a checkpoint that reads it, two ECGs, a question
        not about measurements, which the measurement notes answer)?"""
        return bool(self.config.statement_note and n_ecgs == 2 and not asks_for_measurements(first_question(turns)))

    def statements_of(self, ecgs: Sequence[ECG | PreparedECG | ECGImage]) -> list[list[str]]:
        """Each ECG's classifier statements: those training handed over with the ECG (``meta``), else read now by
        the model's `statement_reader` (attached where the model is loaded: `attach_statement_reader`)."""
        known = [None if isinstance(e, ECGImage) else (e.meta or {}).get(STATEMENTS_KEY) for e in ecgs]
        todo = [e for e, k in zip(ecgs, known) if k is None]
        if todo and self.statement_reader is None:
            raise RuntimeError("this checkpoint reads statement notes, which its own classifier writes: load it "
                               "with `ecgllm.models.default.load_checkpoint` (or call `attach_statement_reader` with "
                               "the model)")
        read = iter(self.statement_reader(todo) if todo else [])
        return [list(k) if k is not None else next(read) for k in known]

    @property
    def note_version(self) -> int:
        """The version of the measurement notes this checkpoint reads (0: none)."""
        return int(self.config.measurement_note)

    def wants_notes(self, turns: list[dict[str, str]], n_ecgs: int) -> bool:
        """Does this conversation get measurement notes (a checkpoint that reads them, ECGs, a question about a
        measurement)?"""
        return bool(self.note_version and n_ecgs and asks_for_measurements(first_question(turns)))

    def segments(self, turns: list[dict[str, str]], tags: Sequence[str],
                 notes: Sequence[str] | None = None) -> list[tuple[str, bool]]:
        """The rendered training text as ``(piece, is_target)`` pieces, in order.

        Each assistant message is placed by rendering the conversation up to it with the generation prompt
        (exactly the text the model sees when it answers): the target piece is what follows, the message and
        the end-of-turn token. The answer is never searched for in the text, so a question that contains the
        answer's letters ("Is this a normal ECG?" -> "no") cannot move the loss.
        """
        messages = self._messages(turns, tags, notes)
        eos = self.tokenizer.eos_token or ""
        pieces: list[tuple[str, bool]] = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._template(messages[:k], add_generation_prompt=True)
            through = self._template(messages[:k + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not through.startswith(prompt + message["content"]):
                raise ValueError("the chat template does not render an assistant message right after its "
                                 "generation prompt; the loss cannot be placed on it")
            after = through[len(prompt) + len(message["content"]):]
            target = message["content"] + (eos if eos and after.startswith(eos) else "")
            pieces.append((self._expand(prompt[len(done):]), False))
            pieces.append((target, True))
            done = prompt + target
        full = self._template(messages, add_generation_prompt=False)
        if not full.startswith(done):
            raise ValueError("the chat template renders a conversation differently from its parts")
        if full[len(done):]:
            pieces.append((self._expand(full[len(done):]), False))
        return pieces

    def encode_for_training(self, turns: list[dict[str, str]], tags: Sequence[str],
                            notes: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` of one conversation: the pieces of `segments` tokenised one by one, so the
        labelled tokens are exactly each answer and its end-of-turn token, and nothing of the prompt."""
        pieces = self.segments(turns, tags, notes)
        encoded = self.tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        labels: list[int] = []
        for (_, is_target), piece in zip(pieces, encoded):
            ids += piece
            labels += piece if is_target else [IGNORE_INDEX] * len(piece)
        return ids, labels

    def _check_length(self, n_tokens: int) -> None:
        if n_tokens > self.config.max_length:
            raise PromptTooLongError(f"the prompt has {n_tokens} tokens; this model reads at most "
                                     f"{self.config.max_length}: shorten the question")

    def __call__(self, conversations: list[list[dict[str, str]]], ecgs: list[Sequence[ECG | PreparedECG | ECGImage]],
                 tags: list[Sequence[str]] | None = None, train: bool = True) -> dict[str, Any]:
        """Batch for training (``train=True``: right padding, labels on assistant tokens) or generation
        (padded after the prompts' shared prefix, each prompt ends with the assistant header)."""
        if len(conversations) != len(ecgs):
            raise ValueError(f"{len(conversations)} conversations but {len(ecgs)} ECG lists")
        tags = tags or [ecg_tags(len(e)) for e in ecgs]
        notes = [self.notes(c, e) for c, e in zip(conversations, ecgs)]
        batch: dict[str, Any]
        if train:
            rows = [self.encode_for_training(c, t, n) for c, t, n in zip(conversations, tags, notes)]
            width = max(len(ids) for ids, _ in rows)
            self._check_length(width)
            pad = self.tokenizer.pad_token_id
            batch = {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
                     "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
                     "labels": torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in rows])}
        else:
            texts = [self.render(c, t, add_generation_prompt=True, notes=n)
                     for c, t, n in zip(conversations, tags, notes)]
            rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            width = max(len(ids) for ids in rows)
            self._check_length(width)
            batch = self._pad_after_shared_prefix(rows, width)
        flat = [e for group in ecgs for e in group]
        is_image = [isinstance(e, ECGImage) for e in flat]
        batch["ecg"], batch["ecg_mask"] = self.prepare_ecgs([e for e, img in zip(flat, is_image) if not img])
        if any(is_image):
            batch["images"] = self.prepare_images([e for e, img in zip(flat, is_image) if img])
            batch["ecg_is_image"] = torch.tensor(is_image, dtype=torch.bool)
        if self.config.named_slots:
            batch["ecg_named"] = self.named_labels(conversations, [len(group) for group in ecgs])
        return batch

    def named_labels(self, conversations: list[list[dict[str, str]]], n_ecgs: list[int]) -> torch.Tensor:
        """``[E, named_slots]``: for each ECG, the labels its question names. The question is the first user
        message, the one the ECGs come with; every ECG of a conversation gets the same labels."""
        if not self.config.named_labels:
            raise ValueError("this processor has named-label slots but no label names (named_labels); the "
                             "checkpoint was saved before its label vocabulary was loaded")
        rows = []
        for turns, n in zip(conversations, n_ecgs):
            rows += [find_named_labels(first_question(turns), self.config.named_labels, self.config.named_slots)] * n
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.config.named_slots)

    def _pad_after_shared_prefix(self, rows: list[list[int]], width: int) -> dict[str, torch.Tensor]:
        """Generation inputs padded to ``width`` right after the tokens every prompt begins with (system prompt,
        user header) instead of at the very left: the pads are masked out and positions follow the mask, so the
        answers are those of left padding, but the common prefix stays aligned and its keys/values are computed
        once for the batch (the model's prefix cache). Prompts of different lengths batch at the cost of one."""
        shared = 0
        while all(len(ids) > shared + 1 for ids in rows) and len({ids[shared] for ids in rows}) == 1 \
                and rows[0][shared] != self.ecg_token_id:
            shared += 1
        pad = self.tokenizer.pad_token_id
        ids = [row[:shared] + [pad] * (width - len(row)) + row[shared:] for row in rows]
        mask = [[1] * shared + [0] * (width - len(row)) + [1] * (len(row) - shared) for row in rows]
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}

    def prepare_images(self, images: Sequence[ECGImage]) -> torch.Tensor:
        """``[E, 1, H, W]`` image-encoder inputs, sized as the checkpoint's image encoder was trained."""
        from ecgllm.models.image_encoder import image_input

        if not self.config.image:
            raise ImageNotSupportedError("this checkpoint reads ECG signals only (it has no image encoder); give "
                                         "the recording itself (WFDB, DICOM, CSV, ...) or a checkpoint with one")
        h, w = int(self.config.image["height"]), int(self.config.image["width"])
        return torch.from_numpy(np.stack([image_input(e.image, h, w) for e in images]))

    # ------------------------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        (directory / "processor_config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @staticmethod
    def read_prep(directory: str | Path) -> dict:
        """The ECG preparation a saved processor applies (its ``PrepConfig`` as saved), without loading it."""
        return json.loads((Path(directory) / "processor_config.json").read_text())["prep"]

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "EcgProcessor":
        from transformers import AutoTokenizer

        directory = Path(directory)
        config = ProcessorConfig(**json.loads((directory / "processor_config.json").read_text()))
        return cls(AutoTokenizer.from_pretrained(str(directory / "tokenizer")), config)

