"""The configuration part of the llava-style split (configuration here, the model in `ecgllm.models.ecg_lm`, the
processor in `ecgllm.models.processor`): `EcgLMConfig`, what an ECG language model is made of (a training recipe's
``model:`` section is one), and `EcgLanguageModelConfig`, the transformers ``PreTrainedConfig`` a checkpoint's
``config.json`` holds, with the `EcgLMConfig` inside it."""

from __future__ import annotations

from dataclasses import dataclass, field

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ecgllm.models.measurement_note import NOTE_VERSIONS
from ecgllm.models.statement_note import STATEMENT_NOTE_VERSIONS

LLM_POLICIES = ("frozen", "lora", "full")
ENCODER_POLICIES = ("frozen", "trained")


@dataclass
class EcgLMConfig:
    llm: str | None = None                       # local HF folder, or None for the embedded SmolLM2
    encoder: str = "resnet1d"
    encoder_kwargs: dict = field(default_factory=dict)
    projector: str = "mlp2x_gelu"
    llm_policy: str = "lora"
    encoder_policy: str = "trained"
    encoder_init: str | None = None              # a finished encoder pretraining run to start from
    label_tokens: int = 0                        # > 0: that many label tokens per ECG (needs encoder_init's head)
    named_label_tokens: int = 0                  # > 0: slots for the labels the question names (needs label_tokens)
    signal_quality: bool = False                 # noise heads on the signal; noise names fill the named slots too
    balanced_named_labels: bool = False          # named slots read p shifted to equal priors (LabelTokens.fit_priors)
    measurement_note: int = 0                    # measured intervals as text when asked: the note's version
                                                 # (models/measurement_note.py NOTE_VERSIONS; 0 none, true 1)
    statement_note: int = 0                      # two ECGs' classifier statements compared, as text: the note's
                                                 # version (models/statement_note.py; 0 none; needs label_tokens)
    image_encoder_init: str | None = None        # a distilled image encoder run: the model also reads ECG images
    lora: dict = field(default_factory=lambda: {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                                                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})

    def __post_init__(self) -> None:
        if self.llm_policy not in LLM_POLICIES:
            raise ValueError(f"llm_policy must be one of {LLM_POLICIES}")
        if self.encoder_policy not in ENCODER_POLICIES:
            raise ValueError(f"encoder_policy must be one of {ENCODER_POLICIES}")
        if self.named_label_tokens and not self.label_tokens:
            raise ValueError("named_label_tokens needs label_tokens (the classifier head they read)")
        if self.signal_quality and not self.named_label_tokens:
            raise ValueError("signal_quality needs named_label_tokens (its noise probabilities fill those slots)")
        if self.balanced_named_labels and not self.named_label_tokens:
            raise ValueError("balanced_named_labels needs named_label_tokens (it shifts their probabilities)")
        if self.lora.get("modules_to_save") or self.lora.get("bias", "none") != "none":
            # a checkpoint stores the adapter's lora_ weights only (`EcgLanguageModel.save_pretrained`)
            raise ValueError("lora: modules_to_save and bias are not supported (a checkpoint keeps the LoRA matrices "
                             "only); leave them out")
        if self.measurement_note and self.measurement_note not in NOTE_VERSIONS:
            raise ValueError(f"measurement_note must be 0 (no notes) or a note version {sorted(NOTE_VERSIONS)}, "
                             f"not {self.measurement_note!r}")
        if self.statement_note and self.statement_note not in STATEMENT_NOTE_VERSIONS:
            raise ValueError(f"statement_note must be 0 (no notes) or a note version "
                             f"{sorted(STATEMENT_NOTE_VERSIONS)}, not {self.statement_note!r}")
        if self.statement_note and not self.label_tokens:
            raise ValueError("statement_note needs label_tokens (their classifier head finds the statements)")
        if self.statement_note and self.encoder_policy != "frozen":
            raise ValueError("statement_note needs encoder_policy: frozen (a stage reads each record's statements "
                             "once, at its start; a trained encoder would make them stale)")


@strict(accept_kwargs=True)
class EcgLanguageModelConfig(PreTrainedConfig):
    """A checkpoint's ``config.json`` in transformers' own format (`EcgLanguageModel` is a ``PreTrainedModel``):
    the parts the model is made of (``model``: an `EcgLMConfig`, as a recipe's ``model:`` section writes it) and
    what sizes its weights, so that ``from_pretrained`` can build the model before reading them."""

    model_type = "ecgllm"

    model: dict | None = None               # the `EcgLMConfig`
    ecg_token_id: int = -1                  # the ``<ecg>`` placeholder's id in the processor's tokenizer
    vocab_size: int = 0                     # the tokenizer's length with ``<ecg>`` (the LLM's embeddings grow to it)
    n_labels: int | None = None             # outputs of the label tokens' classifier head
    image_encoder: dict | None = None       # the attached image encoder's description (`load_image_encoder`)
    label_vocab: dict | None = None         # the pretrained encoder's label vocabularies (labels.json)
    ecgllm_version: str = ""
    name: str | None = None                 # what servers call the model (`serving.assistant.model_identity`)
    shipped_from: str | None = None         # for the packaged default: the training run it was copied from
    # the base LLM's own configuration, as the model was built on it (decoding reads its layers and vocabulary)
    text_config: dict | PreTrainedConfig | None = None

    def parts(self) -> EcgLMConfig:
        return EcgLMConfig(**(self.model or {}))

    def to_dict(self) -> dict:
        """As transformers writes it, without the base LLM's folder on this machine (a shipped copy names none)."""
        out = super().to_dict()
        if isinstance(out.get("text_config"), dict):
            out["text_config"] = {k: v for k, v in out["text_config"].items() if k != "_name_or_path"}
        return out
