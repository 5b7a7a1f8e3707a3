"""Noise read from a picture of an ECG page: the signal-quality heads' answers, imitated from the image encoder's view.

A question that names a noise ("Does this ECG show baseline drift in lead V3?") gets a named slot filled by the
signal-quality heads (`ecgllm.models.signal_quality`), which read the signal's spectrum. A picture has no signal, so
that slot used to stay blank, and the model answered the noise questions of pictures far worse than of signals
(docs/results/images.md). Drift, bursts and static noise show on paper, though, and the image encoder's feature map
sees the page. This head summarises the maps of its first stages (their mean, maximum and spread over the page, and
their means over a grid of page regions) and predicts, by ridge regression, the logits the signal heads give the same record's signal. It is
fitted on renders of training records (`ecgllm.training.image_quality`); its probabilities fill the slots the
language model learned to read, so nothing downstream changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

IMAGE_QUALITY_FILE = "image_quality.safetensors"
LAYERS = (3, 5, 7)  # the image encoder's `features` after which the head reads: its first three stages (finer maps
#                     than the last, whose training on statements kept little of the trace's texture)
REGIONS = (2, 3)    # rows x columns of page regions whose mean feature the head also reads


def page_descriptors(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Feature maps [B, C, H, W] (`ImageEncoder.encode`'s kept ones) -> [B, sum C x (3 + regions)] float32: per
    channel, the mean, maximum and spread over the page, then the mean over each of `REGIONS` (row-major)."""
    parts = []
    for feature_map in feature_maps:
        feature_map = feature_map.float()
        parts += [feature_map.mean((2, 3)), feature_map.amax((2, 3)), feature_map.std((2, 3)),
                  torch.nn.functional.adaptive_avg_pool2d(feature_map, REGIONS).flatten(1)]
    return torch.cat(parts, 1)


def pair_fingerprint(image_encoder: torch.nn.Module, quality: torch.nn.Module) -> str:
    """What a head was fitted for: the image encoder whose maps it reads and the signal-quality heads it imitates
    (their weights as float32, and the maps and regions read). A head is served only beside that very pair."""
    digest = hashlib.sha256(repr((LAYERS, REGIONS)).encode())
    for module in (image_encoder, quality):
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class ImageQuality:
    """Standardised page descriptors -> the signal-quality heads' logits, linearly; ``__call__`` gives probabilities
    [B, entries] in `SignalQuality.entry_names` order. A plain object, not a module: fitted once, never trained by
    the LM's optimizer, never cast with the model (it runs in float32 on whatever device its input is on)."""

    layers = LAYERS

    def __init__(self, center: np.ndarray, scale: np.ndarray, weight: np.ndarray, bias: np.ndarray, pair: str) -> None:
        if weight.shape != (len(center), len(bias)) or scale.shape != center.shape:
            raise ValueError(f"image quality head: inconsistent shapes {center.shape}, {scale.shape}, {weight.shape}, "
                             f"{bias.shape}")
        self.center, self.scale = np.asarray(center, np.float32), np.asarray(scale, np.float32)
        self.weight, self.bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        self.pair = pair  # `pair_fingerprint` of the image encoder and signal-quality heads it was fitted for

    @property
    def n_entries(self) -> int:
        return len(self.bias)

    def logits(self, descriptors: torch.Tensor) -> torch.Tensor:
        as_tensor = lambda a: torch.from_numpy(a).to(descriptors.device)  # noqa: E731
        if descriptors.shape[-1] != len(self.center):
            raise ValueError(f"image quality head: fitted on {len(self.center)} page descriptors, given "
                             f"{descriptors.shape[-1]} (another image encoder's feature map)")
        standard = (descriptors.float() - as_tensor(self.center)) / as_tensor(self.scale)
        return standard @ as_tensor(self.weight) + as_tensor(self.bias)

    def __call__(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self.logits(page_descriptors(feature_maps)))

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(folder) / IMAGE_QUALITY_FILE
        save_file({"center": self.center, "scale": self.scale, "weight": self.weight, "bias": self.bias}, str(path),
                  metadata={"pair": self.pair})
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "ImageQuality | None":
        """The head saved in ``folder``; None where there is none (an image path fitted before it existed: a
        picture's noise slots then stay blank)."""
        path = Path(folder) / IMAGE_QUALITY_FILE
        if not path.exists():
            return None
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(path), framework="numpy") as opened:
            pair = (opened.metadata() or {}).get("pair", "")
        saved = load_file(str(path))
        return cls(saved["center"], saved["scale"], saved["weight"], saved["bias"], pair)
