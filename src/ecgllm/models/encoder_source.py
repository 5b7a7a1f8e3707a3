"""Where a pretrained signal encoder comes from, read one way by every stage that starts from one (a language-model
stage's ``encoder_init``, the image encoder's teacher, the classifier baseline): a finished encoder run
(``encoder_config.json``, ``encoder.safetensors``, ``head.safetensors``, ``labels.json``) or a model folder of either
layout (`ecgllm.models.model_folder`: its configuration and processor preparation, its encoder weights, the
classifier head inside its label tokens, its label vocabulary)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


# Encoder runs call the language model's "center" normalisation (millivolts, baseline removed) "mv".
ENCODER_TO_PREP_NORMALIZE = {"mv": "center", "zscore": "zscore"}


def encoder_meta(folder: str | Path) -> dict:
    """``{"encoder", "encoder_kwargs", "input": {"normalize", "fs"}, "prep"}`` of an encoder run or a model folder:
    ``"prep"`` is the whole preparation (filtering, leads, window) the encoder was fed; encoder runs from before it
    was recorded have only ``"input"``."""
    from ecgllm.models.model_folder import read_config
    from ecgllm.models.processor import EcgProcessor
    from ecgllm.models.removed_features import RemovedFeatureError

    from ecgllm.models.card import check_card

    folder = Path(folder)
    if _is_encoder_run(folder):
        meta = json.loads((folder / "encoder_config.json").read_text())
        check_card(folder, "signal_encoder", meta.get("prep") or meta["input"])  # the card its run wrote beside
        return meta
    try:
        prep = EcgProcessor.read_prep(folder)
        config = read_config(folder).model  # stops on a removed feature: its encoder may have trained on an oracle input
    except RemovedFeatureError:
        raise
    except (FileNotFoundError, KeyError, ValueError, OSError):
        raise FileNotFoundError(f"{folder} is neither a finished `ecgllm train` encoder run (encoder_config.json) "
                                f"nor a model folder") from None
    as_encoder = {prep_name: name for name, prep_name in ENCODER_TO_PREP_NORMALIZE.items()}
    normalize = as_encoder.get(prep.get("normalize"), prep.get("normalize"))
    return {"encoder": config["encoder"], "encoder_kwargs": config["encoder_kwargs"],
            "input": {"normalize": normalize, "fs": prep.get("fs")}, "prep": prep}


def encoder_head(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The classifier head (``weight``, ``bias``) of an encoder run, or of a model folder's label tokens; None
    when the folder has none."""
    from safetensors.torch import load_file

    from ecgllm.models.model_folder import part_state

    folder = Path(folder)
    if _is_encoder_run(folder):
        return load_file(folder / "head.safetensors") if (folder / "head.safetensors").exists() else None
    label_tokens = part_state(folder, "label_tokens")
    if label_tokens is None:
        return None
    return {k.removeprefix("head."): v for k, v in label_tokens.items() if k.startswith("head.")}


def encoder_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The signal encoder's weights of an encoder run (its card checked, `encoder_meta`) or a model folder."""
    from safetensors.torch import load_file

    from ecgllm.models.model_folder import part_state

    folder = Path(folder)
    if _is_encoder_run(folder):
        encoder_meta(folder)  # its card checked
        state = load_file(folder / "encoder.safetensors")
    else:
        state = part_state(folder, "encoder")
    if state is None:
        raise FileNotFoundError(f"{folder} holds no encoder weights")
    return state


def encoder_labels(folder: str | Path) -> dict | None:
    """The label vocabulary (``labels.json``'s) of an encoder run or a model folder; None when it has none."""
    from ecgllm.models.model_folder import read_config

    folder = Path(folder)
    if _is_encoder_run(folder) or not (folder / "config.json").exists():
        labels = folder / "labels.json"
        return json.loads(labels.read_text()) if labels.exists() else None
    return read_config(folder).label_vocab


def _is_encoder_run(folder: Path) -> bool:
    return (folder / "encoder_config.json").exists()
