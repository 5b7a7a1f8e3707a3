"""What a language-model folder holds, in either of its two layouts: its configuration and each part's weights.

Today's layout is transformers' (`EcgLanguageModel.save_pretrained`): ``config.json`` (`EcgLanguageModelConfig`,
model_type "ecgllm") and one ``model.safetensors`` whose keys are the model's own (``encoder.``, ``projector.``,
``label_tokens.``, ``image_encoder.``, the LoRA adapter under ``llm.``). Folders written before it (training runs
that are still resumed, exported or continued from) hold ``config.json`` as ``{"config": ..., "name": ...}`` and a
file per part (``encoder.safetensors``, ``adapter/``, ``labels.json``, ``image_encoder.json``, ...). Both load, and
both are read here only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ecgllm.models.configuration import EcgLanguageModelConfig
from ecgllm.models.removed_features import without_removed_keys

PARTS = ("encoder", "projector", "label_tokens", "image_encoder")
WEIGHTS_FILE = "model.safetensors"
# the files `saved_weights` reads, in either layout
WEIGHT_FILES = (WEIGHTS_FILE, *(f"{part}.safetensors" for part in PARTS), "adapter/adapter_model.safetensors")
# what a folder of the older layout holds beside config.json (its llm/ stays: a recipe's `llm:` may point at it)
LEGACY_FILES = tuple(f"{part}.safetensors" for part in PARTS) + ("image_encoder.json", "labels.json", "adapter")


def is_model_folder(folder: str | Path) -> bool:
    """A language-model folder of either layout (not an encoder run or any other folder with a config.json)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    return isinstance(meta, dict) and (meta.get("model_type") == EcgLanguageModelConfig.model_type
                                       or _nests_parts(meta))


def is_legacy(folder: str | Path) -> bool:
    """A folder of the layout before transformers' (its config.json nests the parts under "config")."""
    return _nests_parts(json.loads((Path(folder) / "config.json").read_text()))


def _nests_parts(meta: dict) -> bool:
    return "config" in meta and "model_type" not in meta


def read_config(folder: str | Path) -> EcgLanguageModelConfig:
    """The folder's configuration as today's `EcgLanguageModelConfig`, whichever layout wrote it; the parts of a
    model trained with a removed feature stop here (`without_removed_keys`)."""
    folder = Path(folder)
    path = folder / "config.json"
    if not is_legacy(folder):
        config = EcgLanguageModelConfig.from_pretrained(str(folder))
        config.model = without_removed_keys(config.model or {}, str(path))
        return config
    from ecgllm.models.processor import EcgProcessor

    meta = json.loads(path.read_text())
    processor = EcgProcessor.from_pretrained(folder)
    label_head = part_state(folder, "label_tokens")
    image = folder / "image_encoder.json"
    labels = folder / "labels.json"
    return EcgLanguageModelConfig(
        model=without_removed_keys(meta["config"], str(path)), ecg_token_id=processor.ecg_token_id,
        vocab_size=len(processor.tokenizer),
        n_labels=None if label_head is None else int(label_head["head.weight"].shape[0]),
        image_encoder=json.loads(image.read_text()) if image.exists() else None,
        label_vocab=json.loads(labels.read_text()) if labels.exists() else None,
        ecgllm_version=meta.get("ecgllm_version", ""), name=meta.get("name"), shipped_from=meta.get("shipped_from"))


def own_llm_folder(folder: str | Path) -> Path | None:
    """A ``full``-policy folder of the older layout carries its whole LLM in ``llm/``: the model is built on it."""
    own = Path(folder) / "llm"
    return own if is_legacy(folder) and (own / "config.json").exists() else None


def part_state(folder: str | Path, part: str) -> dict[str, torch.Tensor] | None:
    """One part's weights (``encoder``, ``projector``, ``label_tokens`` or ``image_encoder``) under the part's own
    keys, or None when the folder has none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    folder = Path(folder)
    if is_legacy(folder):
        path = folder / f"{part}.safetensors"
        return load_file(path) if path.exists() else None
    prefix = f"{part}."
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as saved:  # this part's tensors only
        state = {key.removeprefix(prefix): saved.get_tensor(key) for key in saved.keys() if key.startswith(prefix)}
    return state or None


def remove_legacy_files(folder: str | Path) -> None:
    """Drop the older layout's files from a model folder just written again in today's layout (a step folder
    exported again): a reader must never find a stale part beside the new weights."""
    import shutil

    folder = Path(folder)
    for name in LEGACY_FILES:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def load_weights(model, folder: str | Path, *, complete: bool = True) -> None:
    """The folder's weights into ``model`` (built with the same architecture), the base LLM untouched.

    ``complete`` (loading a model): every part the model has must be in the folder, its LLM weights (LoRA
    adapter or full LLM) must fit exactly, and anything else stops with the folder's name. Otherwise (a stage
    continuing from an earlier one, ``init_from``): a part the folder lacks keeps its start (label tokens of a stage
    before them), the model's own image encoder is kept, and LLM weights of another ``llm_policy`` are not carried
    over (a frozen stage's folder seeds a LoRA stage with a fresh adapter). LoRA weights of the same policy must fit
    exactly: a stage that adds target modules starts from a new run, not from ``init_from``."""
    folder = Path(folder)
    for part in PARTS:
        module = getattr(model, part)
        if module is None or (part == "image_encoder" and not complete):
            continue
        state = part_state(folder, part)
        if state is None:
            if complete or part in ("encoder", "projector"):
                raise ValueError(f"{folder}: no {part} weights, which this model has (the folder is incomplete)")
            continue
        if part == "label_tokens":
            module.load_state(state)  # a checkpoint from before named-label tokens leaves those at their start
        else:
            module.load_state_dict(state)
    policy = model.ecg_config.llm_policy
    # (the saved policy is read only for a stage's start: a loaded model's configuration is the folder's own)
    if policy == "frozen" or (not complete and read_config(folder).parts().llm_policy != policy):
        return
    if is_legacy(folder):
        _load_legacy_llm(model, folder, policy)
        return
    from safetensors.torch import load_file

    saved = {key.removeprefix("llm."): value for key, value in load_file(folder / WEIGHTS_FILE).items()
             if key.startswith("llm.")}
    missing, unexpected = model.llm.load_state_dict(saved, strict=False)
    # a LoRA checkpoint holds the adapter only: the base weights stay as the base model's folder gave them
    missing = [key for key in missing if "lora_" in key] if policy == "lora" else missing
    tied = {key.removeprefix("llm.") for key in model.all_tied_weights_keys}
    missing = [key for key in missing if key not in tied]
    if unexpected or missing:
        raise ValueError(f"{folder}: its LLM weights do not fit this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): was it saved with another llm_policy or LoRA configuration?")


def _load_legacy_llm(model, folder: Path, policy: str) -> None:
    from safetensors.torch import load_file

    if policy == "lora":
        adapter = folder / "adapter/adapter_model.safetensors"
        if not adapter.exists():
            raise ValueError(f"{folder}: a LoRA model folder without its adapter (adapter/adapter_model.safetensors)")
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.llm, load_file(adapter))
        missing = [key for key in result.missing_keys if "lora_" in key]
        if result.unexpected_keys or missing:
            raise ValueError(f"{folder}: its adapter does not fit this model (missing {missing[:3]}, unexpected "
                             f"{result.unexpected_keys[:3]}): another LoRA configuration?")
    elif policy == "full":
        if not (folder / "llm").is_dir():
            raise ValueError(f"{folder}: a full-LLM model folder without its llm/")
        from ecgllm.models.llm import load_causal_lm

        model.llm.load_state_dict(load_causal_lm(folder / "llm").state_dict())


def saved_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every weight the folder saved, under the model's own keys whichever layout wrote it (a LoRA adapter of the
    older layout under the names it takes inside the model), e.g. to tell whether two folders answer alike."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_legacy(folder):
        return load_file(folder / WEIGHTS_FILE)
    out = {f"{part}.{key}": value for part in PARTS for key, value in (part_state(folder, part) or {}).items()}
    adapter = folder / "adapter/adapter_model.safetensors"
    if adapter.exists():  # PEFT stores adapter weights without the adapter's name, which the model's keys carry
        for key, value in load_file(adapter).items():
            head, _, tail = key.rpartition(".")
            out[f"llm.{head}.default.{tail}"] = value
    return out
