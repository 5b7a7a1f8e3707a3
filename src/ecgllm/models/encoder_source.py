"""Where a pretrained signal encoder comes from, read one way by every stage that starts from one (a language-model
stage's ``encoder_init``, the image encoder's teacher, the classifier baseline): a finished encoder run
(``encoder_config.json``, ``head.safetensors``) or a model folder (its ``config.json`` and processor preparation,
the classifier head inside its label tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ecgllm.models.removed_features import without_removed_keys

# Encoder runs call the language model's "center" normalisation (millivolts, baseline removed) "mv".
ENCODER_TO_PREP_NORMALIZE = {"mv": "center", "zscore": "zscore"}


def encoder_meta(folder: str | Path) -> dict:
    """``{"encoder", "encoder_kwargs", "input": {"normalize", "fs"}, "prep"}`` of an encoder run or a model folder:
    ``"prep"`` is the whole preparation (filtering, leads, window) the encoder was fed; encoder runs from before it
    was recorded have only ``"input"``."""
    folder = Path(folder)
    if (folder / "encoder_config.json").exists():
        return json.loads((folder / "encoder_config.json").read_text())
    try:
        config = json.loads((folder / "config.json").read_text())["config"]
        prep = json.loads((folder / "processor_config.json").read_text())["prep"]
    except (FileNotFoundError, KeyError, ValueError):
        raise FileNotFoundError(f"{folder} is neither a finished `ecgllm train` encoder run (encoder_config.json) "
                                f"nor a model folder") from None
    config = without_removed_keys(config, str(folder / "config.json"))  # its encoder may have trained on an oracle input
    as_encoder = {prep_name: name for name, prep_name in ENCODER_TO_PREP_NORMALIZE.items()}
    normalize = as_encoder.get(prep.get("normalize"), prep.get("normalize"))
    return {"encoder": config["encoder"], "encoder_kwargs": config["encoder_kwargs"],
            "input": {"normalize": normalize, "fs": prep.get("fs")}, "prep": prep}


def encoder_head(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The classifier head (``weight``, ``bias``) of an encoder run, or of a model folder's label tokens; None
    when the folder has none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "head.safetensors").exists():
        return load_file(folder / "head.safetensors")
    if (folder / "label_tokens.safetensors").exists():
        return {k.removeprefix("head."): v for k, v in load_file(folder / "label_tokens.safetensors").items()
                if k.startswith("head.")}
    return None
