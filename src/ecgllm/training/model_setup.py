"""Stage wiring: a model assembled for a training stage from its recipe's pieces (the base LLM, a pretrained
encoder with its classifier head and label vocabulary, a distilled image encoder, an earlier stage's weights).
`ecgllm.models.ecg_lm` holds the model itself, its decoding and its checkpoint format; what a stage starts from is
decided here."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ecgllm.io.leads import STANDARD_12
from ecgllm.models.configuration import EcgLanguageModelConfig, EcgLMConfig
from ecgllm.models.ecg_lm import EcgLanguageModel
from ecgllm.models.encoder_source import (ENCODER_TO_PREP_NORMALIZE, encoder_head, encoder_labels, encoder_meta,
                                          encoder_state)
from ecgllm.models.encoders import build_encoder
from ecgllm.models.model_folder import load_weights, read_config
from ecgllm.models.processor import EcgProcessor, ProcessorConfig
from ecgllm.models.statement_note import attach_statement_reader


def build_model(config: EcgLMConfig, processor_config: ProcessorConfig | None = None, llm=None, tokenizer=None,
                init_from: str | Path | None = None) -> tuple[EcgLanguageModel, EcgProcessor]:
    """A fresh model and its processor (``llm``/``tokenizer`` may be given, e.g. tiny ones in tests).
    ``init_from``: the earlier stage whose weights will be loaded (it sizes the label tokens when the recipe
    names no ``encoder_init``)."""
    if llm is None or tokenizer is None:
        from ecgllm.models.llm import load_llm

        llm, tokenizer = load_llm(config.llm)
    encoder = build_encoder(config.encoder, **config.encoder_kwargs)  # to learn n_tokens
    processor_config = processor_config or ProcessorConfig()
    processor_config.n_ecg_tokens = encoder.n_tokens + config.label_tokens + config.named_label_tokens
    processor_config.named_slots = config.named_label_tokens
    processor_config.measurement_note = config.measurement_note
    processor_config.statement_note = config.statement_note
    if config.signal_quality and tuple(processor_config.prep.get("leads", STANDARD_12)) != STANDARD_12:
        raise ValueError(f"signal_quality reads the 12 standard leads in order {STANDARD_12}; the recipe's prep "
                         f"has {processor_config.prep.get('leads')}")
    processor = EcgProcessor(tokenizer, processor_config)
    head = _encoder_head(config.encoder_init) if config.label_tokens and config.encoder_init else None
    n_labels = head["weight"].shape[0] if head is not None else None
    if config.label_tokens and head is None and init_from is not None:
        n_labels = read_config(init_from).n_labels
    model = EcgLanguageModel(EcgLanguageModelConfig(model=asdict(config), ecg_token_id=processor.ecg_token_id,
                                                    vocab_size=len(tokenizer), n_labels=n_labels), llm=llm)
    if config.encoder_init:
        load_pretrained_encoder(model, config.encoder_init, processor_config.prep)
    if config.image_encoder_init:
        attach_image_encoder(model, config.image_encoder_init, processor)
    if model.label_tokens is not None and head is not None:
        model.label_tokens.head.load_state_dict(head)
        model.label_tokens.set_names(model.label_names(), tokenizer, model.llm.get_input_embeddings())
    name_labels_for(model, processor)
    attach_statement_reader(model, processor)
    return model, processor


def attach_image_encoder(model: EcgLanguageModel, folder: str | Path, processor: EcgProcessor) -> None:
    """Add a distilled image encoder (`ecgllm.training.distill_image` output) so the model reads ECG images through
    the same projector, label tokens and LLM; the processor learns its input size."""
    from ecgllm.models.image_encoder import load_image_encoder
    from ecgllm.models.page_check import PAGE_CHECK_FILE, PageCheck

    folder = Path(folder)
    encoder, saved = load_image_encoder(folder)
    model.check_image_tokens(encoder, f"the image encoder in {folder}")
    model.image_encoder = encoder.eval().requires_grad_(False)
    model.config.image_encoder = saved
    # None for an encoder distilled before the check existed
    model.set_page_check(PageCheck.load(folder), str(folder / PAGE_CHECK_FILE))
    # an image quality head read another image encoder's feature maps: it goes (one is fitted for a pair of image
    # encoder and signal-quality heads, in the model folder that holds both: `scripts/fit_image_quality.py`)
    model.set_image_quality(None)
    processor.config.image = {"height": encoder.config.height, "width": encoder.config.width}


def name_labels_for(model: EcgLanguageModel, processor: EcgProcessor) -> None:
    """Tell the processor which label names to look for in questions (named-label tokens)."""
    if not model.ecg_config.named_label_tokens:
        return
    names = model.label_names()
    if not names:
        return  # no label vocabulary yet: `load_stage_weights` brings it
    if model.label_tokens is not None and len(names) != model.label_tokens.head.out_features:
        raise ValueError(f"named_label_tokens: {len(names)} label names for a classifier of "
                         f"{model.label_tokens.head.out_features} outputs (labels.json does not fit the head)")
    processor.config.named_labels = model.label_tokens.named_vocabulary(names) if model.label_tokens else names


def load_pretrained_encoder(model: EcgLanguageModel, folder: str | Path, prep: dict) -> None:
    """Start from an encoder pretraining run, or from the encoder of a model folder (its encoder, classifier
    head and label vocabulary only: never its projector or adapter): the weights, the label vocabulary, and a
    check that the processor feeds the encoder the input it was trained on."""
    folder = Path(folder)
    try:
        saved = encoder_meta(folder)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"encoder_init: {exc}") from None
    # n_tokens only sets the final pooling, so an encoder pretrained with 16 tokens may serve with 8
    same = {k: v for k, v in saved["encoder_kwargs"].items() if k != "n_tokens"} == \
        {k: v for k, v in model.ecg_config.encoder_kwargs.items() if k != "n_tokens"}
    if saved["encoder"] != model.ecg_config.encoder or not same:
        raise ValueError(f"encoder_init: {folder} holds {saved['encoder']} {saved['encoder_kwargs']}, the "
                         f"recipe asks for {model.ecg_config.encoder} {model.ecg_config.encoder_kwargs}")
    normalize = saved["input"]["normalize"]
    expected = ENCODER_TO_PREP_NORMALIZE.get(normalize, normalize)
    if prep.get("normalize") != expected or float(prep.get("fs", 0)) != float(saved["input"]["fs"]):
        raise ValueError(f"encoder_init: the encoder was trained on {saved['input']} input; set prep.fs to "
                         f"{saved['input']['fs']} and prep.normalize to {expected!r}")
    # a model folder records its whole preparation: filtering, leads and window must match too
    as_saved = json.loads(json.dumps(prep))  # tuples as lists, as the folder stores them
    differs = {k: v for k, v in saved.get("prep", {}).items() if k != "crop" and as_saved.get(k) != v}
    if differs:
        raise ValueError(f"encoder_init: {folder} prepared its ECGs with {differs}; set the recipe's prep to the "
                         f"same (it has {({k: as_saved.get(k) for k in differs})})")
    model.encoder.load_state_dict(encoder_state(folder))
    labels = encoder_labels(folder)
    if labels:
        model.label_vocab = labels


def load_stage_weights(model: EcgLanguageModel, directory: str | Path, processor: EcgProcessor | None = None) -> None:
    """Continue from an earlier stage's checkpoint folder (same architecture, either layout): encoder, projector,
    label tokens, image encoder, and the LoRA adapter or full LLM weights. The base LLM itself is not touched."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"init_from: {directory} is not a checkpoint folder (no config.json)")
    # weights trained with a removed feature (e.g. the true stratum as an input) must not seed a new stage
    saved = read_config(directory)
    if model.image_encoder is None and saved.image_encoder is not None and processor is not None:
        attach_image_encoder(model, directory, processor)
    load_weights(model, directory, complete=False)
    if saved.label_vocab:
        model.label_vocab = dict(saved.label_vocab)
    if processor is not None:
        name_labels_for(model, processor)


def _encoder_head(folder: str | Path) -> dict[str, torch.Tensor]:
    head = encoder_head(folder)
    if head is None:
        raise FileNotFoundError(f"label_tokens: {folder} holds no head.safetensors; point encoder_init at a finished "
                                f"`ecgllm train` encoder run (or a model folder with label tokens), or set "
                                f"label_tokens to 0")
    return head
