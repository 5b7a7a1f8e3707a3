"""ECG encoders behind one protocol: ``forward(x [B, leads, T], lead_mask [B, leads]) -> tokens [B, N, D]``
and ``pool(tokens) -> [B, D]``, built by name from a registry (like open_clip / LLaVA builders).

Missing leads are never silently zero: the ResNet sees the lead-presence mask as extra input channels,
the patch transformer excludes missing leads' patches from attention.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ENCODERS: dict[str, Callable[..., "ECGEncoder"]] = {}


def register_encoder(name: str):
    def wrap(cls):
        ENCODERS[name] = cls
        return cls
    return wrap


def build_encoder(name: str, **kwargs) -> "ECGEncoder":
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; registered: {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)


class ECGEncoder(nn.Module):
    """Base class: subclasses set ``dim`` (token width) and ``n_tokens`` (tokens per ECG)."""

    dim: int
    n_tokens: int

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class _SqueezeExcite(nn.Module):
    """Channel gates from the block's time-averaged output: which leads' patterns matter for this record."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(-1)).unsqueeze(-1)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int = 7, se_reduction: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, 1, kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out)))
        self.se = _SqueezeExcite(c_out, se_reduction) if se_reduction else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.se(self.bn2(self.conv2(y))) + self.skip(x))


@register_encoder("resnet1d")
class ResNet1d(ECGEncoder):
    """1-D ResNet; the last feature map is pooled into ``n_tokens`` time tokens of width ``dim``.
    ``se_reduction`` > 0 adds squeeze-and-excitation channel gates to every block. ``pool="meanmax"`` pools
    tokens into mean + max, so one abnormal beat in a long window is not averaged away."""

    def __init__(self, n_leads: int = 12, widths: tuple[int, ...] = (64, 128, 192, 256), n_tokens: int = 16,
                 blocks_per_stage: int = 2, se_reduction: int = 0, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "meanmax"):
            raise ValueError(f"pool must be 'mean' or 'meanmax', got {pool!r}")
        self.n_leads, self.dim, self.n_tokens, self.pool_mode = n_leads, widths[-1], n_tokens, pool
        self.stem = nn.Sequential(nn.Conv1d(2 * n_leads, widths[0], 15, 2, 7, bias=False),
                                  nn.BatchNorm1d(widths[0]), nn.ReLU())
        stages, c = [], widths[0]
        for w in widths:
            for b in range(blocks_per_stage):
                stages.append(_ResBlock(c, w, stride=2 if b == 0 else 1, se_reduction=se_reduction))
                c = w
        self.stages = nn.Sequential(*stages)
        self.to_tokens = nn.AdaptiveAvgPool1d(n_tokens)

    def forward(self, x: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        if lead_mask is None:
            lead_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        m = lead_mask.to(x.dtype).unsqueeze(-1)
        features = torch.cat([x * m, m.expand_as(x)], dim=1)  # presence as input, not a silent zero
        return self.to_tokens(self.stages(self.stem(features))).transpose(1, 2)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_mode == "meanmax":
            return tokens.mean(dim=1) + tokens.amax(dim=1)
        return tokens.mean(dim=1)


@register_encoder("patch_transformer")
class PatchTransformer(ECGEncoder):
    """Lead × time patches with lead and time embeddings; missing leads are masked out of attention.
    Tokens: one per time patch (mean over present leads) after the transformer."""

    def __init__(self, n_leads: int = 12, samples: int = 1000, patch: int = 50, dim: int = 192, depth: int = 4,
                 heads: int = 4) -> None:
        super().__init__()
        if samples % patch:
            raise ValueError(f"samples ({samples}) must be a multiple of patch ({patch})")
        self.n_leads, self.patch, self.dim = n_leads, patch, dim
        self.n_time = samples // patch
        self.n_tokens = self.n_time
        self.embed = nn.Linear(patch, dim)
        self.lead_embedding = nn.Parameter(torch.zeros(n_leads, dim))
        self.time_embedding = nn.Parameter(torch.zeros(self.n_time, dim))
        nn.init.trunc_normal_(self.lead_embedding, std=0.02)
        nn.init.trunc_normal_(self.time_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, leads, t = x.shape
        if lead_mask is None:
            lead_mask = torch.ones(b, leads, dtype=torch.bool, device=x.device)
        patches = x[..., : self.n_time * self.patch].reshape(b, leads, self.n_time, self.patch)
        h = self.embed(patches) + self.lead_embedding[None, :, None] + self.time_embedding[None, None]
        h = h.reshape(b, leads * self.n_time, self.dim)
        key_padding = (~lead_mask).repeat_interleave(self.n_time, dim=1)
        h = self.norm(self.transformer(h, src_key_padding_mask=key_padding))
        h = h.reshape(b, leads, self.n_time, self.dim)
        w = lead_mask.to(h.dtype)[..., None, None]
        return (h * w).sum(1) / w.sum(1).clamp(min=1.0)
