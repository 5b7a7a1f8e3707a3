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
from typing import Any, Sequence

import numpy as np
import torch

from ecgllm.errors import InputError
from ecgllm.io.image import ECGImage
from ecgllm.io.record import ECG
from ecgllm.signal.prepare import PrepConfig, PreparedECG, prepare

ECG_TOKEN = "<ecg>"
IGNORE_INDEX = -100


class ImageNotSupportedError(InputError):
    """An ECG image was given to a checkpoint without an image encoder."""


@dataclass
class ProcessorConfig:
    prep: dict = field(default_factory=lambda: PrepConfig().to_dict())
    n_ecg_tokens: int = 16
    ecg_token: str = ECG_TOKEN
    system_prompt: str | None = "You are a careful assistant that reads electrocardiograms."
    max_length: int = 1024
    image: dict | None = None       # {"height", "width"} of the image encoder's input; None: signals only


class EcgProcessor:
    def __init__(self, tokenizer, config: ProcessorConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.prep = PrepConfig.from_dict(config.prep)
        if config.ecg_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [config.ecg_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.ecg_token_id = tokenizer.convert_tokens_to_ids(config.ecg_token)

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
    def render(self, turns: list[dict[str, str]], tags: Sequence[str], add_generation_prompt: bool) -> str:
        """Chat-template text with each ECG's tag and an expanded ``<ecg>`` span before the first question."""
        intro = "\n".join(f"{tag}: {self.config.ecg_token}" if tag else self.config.ecg_token for tag in tags)
        messages = [dict(m) for m in turns]
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        if intro:
            messages[first_user]["content"] = f"{intro}\n{messages[first_user]['content']}"
        if self.config.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        return text.replace(self.config.ecg_token, self.config.ecg_token * self.config.n_ecg_tokens)

    def _assistant_char_spans(self, text: str, turns: list[dict[str, str]]) -> list[tuple[int, int]]:
        spans, cursor = [], 0
        eos = self.tokenizer.eos_token or ""
        for m in turns:
            if m["role"] != "assistant":
                continue
            start = text.find(m["content"], cursor)
            if start < 0:
                raise ValueError("the chat template changed an assistant message; cannot locate it for the loss")
            end = start + len(m["content"])
            if eos and text.startswith(eos, end):
                end += len(eos)  # learn to stop, too
            spans.append((start, end))
            cursor = end
        return spans

    def __call__(self, conversations: list[list[dict[str, str]]], ecgs: list[Sequence[ECG | PreparedECG | ECGImage]],
                 tags: list[Sequence[str]] | None = None, train: bool = True) -> dict[str, Any]:
        """Batch for training (``train=True``: right padding, labels on assistant tokens) or generation
        (left padding, prompt ends with the assistant header)."""
        if len(conversations) != len(ecgs):
            raise ValueError(f"{len(conversations)} conversations but {len(ecgs)} ECG lists")
        tags = tags or [default_tags(len(e)) for e in ecgs]
        texts = [self.render(c, t, add_generation_prompt=not train) for c, t in zip(conversations, tags)]
        self.tokenizer.padding_side = "right" if train else "left"
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                                 return_offsets_mapping=train)
        if encoded["input_ids"].shape[1] > self.config.max_length:
            raise ValueError(f"a prompt has {encoded['input_ids'].shape[1]} tokens; the limit is "
                             f"{self.config.max_length} (ProcessorConfig.max_length)")
        batch: dict[str, Any] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if train:
            labels = torch.full_like(encoded["input_ids"], IGNORE_INDEX)
            offsets = encoded.pop("offset_mapping")
            for i, (text, turns) in enumerate(zip(texts, conversations)):
                for start, end in self._assistant_char_spans(text, turns):
                    inside = (offsets[i, :, 0] >= start) & (offsets[i, :, 1] <= end) & (offsets[i, :, 1] > offsets[i, :, 0])
                    labels[i, inside] = encoded["input_ids"][i, inside]
            batch["labels"] = labels
        flat = [e for group in ecgs for e in group]
        is_image = [isinstance(e, ECGImage) for e in flat]
        batch["ecg"], batch["ecg_mask"] = self.prepare_ecgs([e for e, img in zip(flat, is_image) if not img])
        if any(is_image):
            batch["images"] = self.prepare_images([e for e, img in zip(flat, is_image) if img])
            batch["ecg_is_image"] = torch.tensor(is_image, dtype=torch.bool)
        return batch

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

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "EcgProcessor":
        from transformers import AutoTokenizer

        directory = Path(directory)
        config = ProcessorConfig(**json.loads((directory / "processor_config.json").read_text()))
        return cls(AutoTokenizer.from_pretrained(str(directory / "tokenizer")), config)


def default_tags(n: int) -> list[str]:
    """Short text tags that introduce the ECGs of one prompt."""
    if n == 1:
        return [""]
    return [f"ECG {i + 1}" + (" (earlier)" if i == 0 and n == 2 else "") for i in range(n)]
