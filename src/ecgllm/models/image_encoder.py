"""The image encoder: a picture of a printed ECG → tokens in the signal encoder's token space.

It is trained by distillation (`ecgllm.training.distill_image`) to reproduce, from a render of a record, the
tokens the frozen signal encoder makes of the record's signal. The projector, label tokens and LLM of a
checkpoint then serve images unchanged: one model, two modalities.

Input: the page in grey levels, inverted (ink = 1, paper = 0) and resized to a fixed size; a small CNN whose
first downsampling is a max-pool, so that one-pixel traces survive it. Output: ``n_tokens`` tokens of width
``dim``, read from the feature map by cross-attention with learned queries (the page layout decides where each
lead and time lies, so the model learns where to look).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


@dataclass
class ImageEncoderConfig:
    n_tokens: int = 4                       # must equal the signal encoder's tokens per ECG
    dim: int = 256                          # must equal the signal encoder's token width
    widths: list = field(default_factory=lambda: [24, 48, 96, 192])
    height: int = 448
    width: int = 576
    heads: int = 4
    view_shift: int = 0                     # > 0: read (not trained) as the mean tokens of the page and four copies of
                                            # it moved by this many pixels up, down, left and right

    def to_dict(self) -> dict:
        return asdict(self)

    def shape(self) -> dict:
        """What the weights depend on: every field but ``view_shift``, which is how they are read."""
        return {k: v for k, v in self.to_dict().items() if k != "view_shift"}


def image_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """``[1, height, width]`` float32: grey levels inverted so ink is bright (max-pooling keeps thin traces)."""
    grey = image.convert("L").resize((width, height), Image.BILINEAR)
    return (1.0 - np.asarray(grey, dtype=np.float32) / 255.0)[None]


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ImageEncoder(nn.Module):
    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.n_tokens, self.dim = config.n_tokens, config.dim
        w = config.widths
        layers: list[nn.Module] = [nn.Conv2d(1, w[0], 4, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(),
                                   nn.MaxPool2d(2)]
        for c_in, c_out in zip(w[:-1], w[1:]):
            layers += [_conv(c_in, c_out, 2), _conv(c_out, c_out, 1)]
        layers += [nn.Conv2d(w[-1], config.dim, 1)]
        self.features = nn.Sequential(*layers)
        stride = 4 * 2 ** (len(w) - 1)
        self.grid = (config.height // stride, config.width // stride)
        self.position = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], config.dim))
        self.queries = nn.Parameter(torch.zeros(1, config.n_tokens, config.dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.attention = nn.MultiheadAttention(config.dim, config.heads, batch_first=True)
        self.norm = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(nn.Linear(config.dim, 2 * config.dim), nn.GELU(), nn.Linear(2 * config.dim, config.dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B, 1, H, W] from `image_input` → tokens [B, n_tokens, dim]."""
        return self.encode(images)[0]

    @staticmethod
    def _through(layers: nn.Sequential, images: torch.Tensor, keep: tuple[int, ...]
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``images`` through ``layers``: the last output and the outputs of the layers whose indices ``keep`` names."""
        kept, f = [], images
        for index, layer in enumerate(layers):
            f = layer(f)
            if index in keep:
                kept.append(f)
        return f, kept

    def feature_maps(self, images: torch.Tensor, keep: tuple[int, ...]) -> list[torch.Tensor]:
        """The feature maps after the layers of `features` whose indices ``keep`` names, computed no further."""
        return self._through(self.features[: max(keep) + 1], images, keep)[1]

    def encode(self, images: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens [B, n_tokens, dim], and the feature maps after the layers of `features` whose indices ``keep``
        names (the image quality head, `ecgllm.models.image_quality`, reads them). Out of training, with a
        ``view_shift``, the tokens are averaged over the page and its four moved copies; the feature maps stay the
        page's own."""
        tokens, kept = self._encode_view(images, keep)
        shift = self.config.view_shift
        if not shift or self.training:
            return tokens, kept
        moved = [self._encode_view(torch.roll(images, offset, dims=(-2, -1)), ())[0]
                 for offset in ((shift, 0), (-shift, 0), (0, shift), (0, -shift))]
        return torch.stack([tokens, *moved]).mean(0), kept

    def _encode_view(self, images: torch.Tensor, keep: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        f, kept = self._through(self.features, images, keep)
        if f.shape[-2:] != self.grid:
            raise ValueError(f"image input must be {self.config.height}x{self.config.width}, got {tuple(images.shape[-2:])}")
        f = f.flatten(2).transpose(1, 2) + self.position
        tokens, _ = self.attention(self.queries.expand(f.shape[0], -1, -1), f, f, need_weights=False)
        return tokens + self.mlp(self.norm(tokens)), kept


def load_image_encoder(folder: str | Path) -> tuple[ImageEncoder, dict]:
    """The image encoder saved in ``folder`` and its saved description (config, teacher, distillation): a
    distillation run (image_encoder.json and image_encoder.safetensors) or a model folder of either layout
    (`ecgllm.models.model_folder`). FileNotFoundError when the folder holds none."""
    from safetensors.torch import load_file

    from ecgllm.models.card import check_card
    from ecgllm.models.model_folder import part_state, read_config

    folder = Path(folder)
    if (folder / "image_encoder.json").exists():
        saved = json.loads((folder / "image_encoder.json").read_text())
        state = load_file(folder / "image_encoder.safetensors")
        if not (folder / "config.json").exists():  # a distillation run (a model folder's card is the model's)
            check_card(folder, "image_encoder", {"height": saved["config"]["height"], "width": saved["config"]["width"]})
    elif (folder / "config.json").exists():
        saved, state = read_config(folder).image_encoder, part_state(folder, "image_encoder")
    else:
        saved = state = None
    if saved is None or state is None:
        raise FileNotFoundError(f"{folder} holds no image encoder")
    encoder = ImageEncoder(ImageEncoderConfig(**saved["config"]))
    encoder.load_state_dict(state)
    return encoder, saved
