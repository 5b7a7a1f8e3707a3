"""`EcgLanguageModel`: an ECG encoder and a projector feeding any Hugging Face causal LM (LLaVA-style), as a
transformers ``PreTrainedModel`` with ``GenerationMixin``.

The processor puts ``n_ecg_tokens`` ``<ecg>`` placeholder tokens per ECG into the prompt; the model embeds
the prompt, checks that the number of placeholders equals ECGs × tokens, and scatters the projected encoder
tokens into those positions (``masked_scatter``, in batch order). Several ECGs per prompt and mixed ECG
counts across a batch work because ECGs are consumed in the order their placeholders appear.

Checkpoints are transformers' own: ``save_pretrained`` writes ``config.json`` (`EcgLanguageModelConfig`) and
``model.safetensors`` with every weight but the base LLM's (a LoRA checkpoint stores its adapter, not the 135M
base weights it reads from the embedded SmolLM2); ``from_pretrained`` builds the model on that base and loads them
over it. Folders of the layout before it (`ecgllm.models.model_folder`) still load.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from ecgllm import __version__
from ecgllm.io.leads import STANDARD_12
from ecgllm.models.card import check_card
from ecgllm.models.configuration import EcgLanguageModelConfig, EcgLMConfig
from ecgllm.models.encoders import build_encoder
from ecgllm.models.label_tokens import LabelTokens
from ecgllm.models.processor import EcgProcessor, ImageNotSupportedError
from ecgllm.models.projector import build_projector
from ecgllm.models.signal_quality import SignalQuality


def add_ecg_token_rows(llm: nn.Module, vocab_size: int) -> None:
    """Grow the embeddings for the ``<ecg>`` token deterministically (mean of the existing rows).

    transformers' default samples new rows at random, so a LoRA checkpoint reloaded on its base model
    would get a different ``<ecg>`` output row each time; the row's input side is never used (the
    placeholders are replaced by ECG tokens) and generation suppresses the token.
    """
    old = llm.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for matrix in {id(m): m for m in (llm.get_input_embeddings(), llm.get_output_embeddings()) if m is not None}.values():
            matrix.weight[old:] = matrix.weight[:old].mean(0)


# Longest training sequence that runs the math attention kernel on the CPU: its backward memory grows with the
# square of the length (batch 8 x 9 heads x 30 layers x 256^2 floats is ~0.6 GB), the flash kernel's does not.
MATH_ATTENTION_MAX_TOKENS = 256


class EcgTokenCountError(ValueError):
    """The prompt's ``<ecg>`` placeholders do not match the ECGs given."""


class EcgLanguageModel(PreTrainedModel, GenerationMixin):
    config_class = EcgLanguageModelConfig
    main_input_name = "input_ids"

    def __init__(self, config: EcgLanguageModelConfig, llm: nn.Module | None = None) -> None:
        """``llm``: the base causal LM (e.g. a tiny one in tests); by default the one ``config.model.llm`` names,
        read from its folder."""
        parts = config.parts()
        if llm is None:
            llm = _read_base_llm(parts)
        add_ecg_token_rows(llm, config.vocab_size)
        config.text_config = llm.config  # what `generate` sizes its cache and vocabulary by
        super().__init__(config)
        self.ecg_config = parts
        self.encoder = build_encoder(parts.encoder, **parts.encoder_kwargs)
        self.llm = llm
        hidden = llm.get_input_embeddings().embedding_dim
        self.projector = build_projector(parts.projector, self.encoder.dim, hidden)
        self.image_encoder: nn.Module | None = None  # set from config.image_encoder, or by `ecgllm.training.model_setup.attach_image_encoder`
        self.page_check = None  # with the image encoder: how far a picture lies from the pages it learned
        self.image_quality = None  # with the image encoder: a picture's noise, read as the signal-quality heads read it
        if config.image_encoder:
            from ecgllm.models.image_encoder import ImageEncoder, ImageEncoderConfig

            image_encoder = ImageEncoder(ImageEncoderConfig(**config.image_encoder["config"]))
            self.check_image_tokens(image_encoder, "the configuration's image encoder")
            self.image_encoder = image_encoder.requires_grad_(False)
        self.label_tokens: LabelTokens | None = None
        if parts.label_tokens:
            if not config.n_labels:
                raise ValueError("label_tokens needs the encoder pretraining's classifier head: set encoder_init "
                                 "to a finished encoder run (it holds head.safetensors)")
            quality = SignalQuality(STANDARD_12) if parts.signal_quality else None
            self.label_tokens = LabelTokens(self.encoder.dim, config.n_labels, hidden, parts.label_tokens,
                                            parts.named_label_tokens, quality, parts.balanced_named_labels)
        self.ecg_token_id = config.ecg_token_id
        self.sparse_logits = True  # training loss: vocabulary projection only where labels are (see forward)
        self.share_prefix = True   # ... and the batch's common leading tokens run once (see _hidden_states)
        self.math_attention = True  # ... and, on the CPU, attention as plain matmuls + softmax (see forward)
        # label vocabularies of the pretrained encoder, if any
        self.label_vocab: dict[str, list[str]] = dict(config.label_vocab or {})
        # decoding follows the LLM's own settings (its end-of-turn token first)
        self.generation_config = copy.deepcopy(llm.generation_config)
        for module in llm.modules():  # given or read already initialised: `post_init` must not draw them anew
            module._is_hf_initialized = True
        self.post_init()
        self._apply_policies()  # after `post_init`: a fresh LoRA adapter keeps PEFT's initialisation

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: each part initialises itself as it is built (PyTorch's defaults, the encoders' own choices)."""

    def _apply_policies(self) -> None:
        if self.ecg_config.llm_policy == "lora":
            from peft import LoraConfig, get_peft_model

            self.llm = get_peft_model(self.llm, LoraConfig(task_type="CAUSAL_LM", **self.ecg_config.lora))
        elif self.ecg_config.llm_policy == "frozen":
            self.llm.requires_grad_(False)
        if self.ecg_config.encoder_policy == "frozen":
            self.encoder.requires_grad_(False)
        # transformers reads the LLM's tied embeddings through PEFT's attribute forwarding, under names that do not
        # exist; the LLM ties its own weights, so only pairs of real parameters are kept
        names = dict(self.named_parameters(remove_duplicate=False))
        self.all_tied_weights_keys = {target: source for target, source in self.all_tied_weights_keys.items()
                                      if target in names and source in names}

    @property
    def tokens_per_ecg(self) -> int:
        return self.encoder.n_tokens + (self.label_tokens.n_tokens if self.label_tokens is not None else 0)

    def label_names(self) -> list[str]:
        """The label-token vocabulary in the classifier head's order (its 71 statements, then the superclasses),
        each by the name the questions use."""
        codes = self.label_vocab.get("all71", []) + self.label_vocab.get("superclass", [])
        names = self.label_vocab.get("names", {})
        return [names.get(c, c) for c in codes]

    def check_image_tokens(self, encoder: nn.Module, which: str) -> None:
        """Pictures must become tokens of the signal encoder's count and width: the projector reads both."""
        if (encoder.n_tokens, encoder.dim) != (self.encoder.n_tokens, self.encoder.dim):
            raise ValueError(f"{which} makes {encoder.n_tokens} tokens of width {encoder.dim}; this model's signal "
                             f"encoder makes {self.encoder.n_tokens} of width {self.encoder.dim}")

    def set_page_check(self, check, where: str = "the page check") -> None:
        """The image encoder's page check (`ecgllm.models.page_check.PageCheck`, or None), read with a float32 copy
        of the image encoder as it is now, kept on the CPU: the check's thresholds were fitted in float32, and a
        model cast to bf16 rounds its weights (a plain attribute, never saved nor cast). A check fitted for another
        view shift than the image encoder's is refused (`PageCheckReadingError`)."""
        if check is not None:
            check.check_reading(self.image_encoder.config.view_shift, where)
        self.page_check = check
        object.__setattr__(self, "_page_check_encoder",
                           None if check is None else copy.deepcopy(self.image_encoder).float().eval())

    def set_image_quality(self, head, where: str = "the image quality head") -> None:
        """The image quality head (`ecgllm.models.image_quality.ImageQuality`, or None): a picture's noise
        probabilities for the named slots the signal-quality heads fill for a signal (a plain attribute, never
        saved with the weights nor cast). Only a head fitted for this very image encoder and these signal-quality
        heads is taken; it reads a float32 copy of the image encoder's first layers, as it was fitted, so a model
        cast to bf16 gives a picture the same noise as in float32."""
        from ecgllm.models.image_quality import pair_fingerprint

        if head is not None:
            quality = self.label_tokens.quality if self.label_tokens is not None else None
            if quality is None or self.image_encoder is None:
                raise ValueError(f"{where}: this model has no {'signal-quality heads' if quality is None else 'image encoder'} "
                                 "for an image quality head to stand beside")
            if next(self.image_encoder.parameters()).dtype != torch.float32:
                raise ValueError(f"{where}: set the image quality head before casting the model (it is checked "
                                 "against, and reads, the float32 image encoder)")
            if not head.pair:
                raise ValueError(f"{where} records no image encoder and signal-quality heads it was fitted for (a "
                                 "head saved before they were recorded); fit it again (scripts/fit_image_quality.py)")
            if head.pair != pair_fingerprint(self.image_encoder, quality):
                raise ValueError(f"{where} was fitted for another image encoder or other signal-quality heads than "
                                 f"this model's; fit it again (scripts/fit_image_quality.py) or delete it")
        self.image_quality = head
        object.__setattr__(self, "_image_quality_encoder",
                           None if head is None else copy.deepcopy(self.image_encoder).float().eval())

    @torch.no_grad()
    def page_distances(self, pixels: torch.Tensor):
        """How far each picture [B, 1, H, W] lies from the ECG pages the image encoder learned from
        (`ecgllm.models.page_check`); None when the model has no image encoder or no fitted check."""
        if self.image_encoder is None or self.page_check is None:
            return None
        from ecgllm.models.page_check import page_readings

        readings = page_readings(self._page_check_encoder, pixels.to("cpu", torch.float32), self.page_check.layers)
        return self.page_check.distance(*readings)

    def train(self, mode: bool = True) -> "EcgLanguageModel":
        """Frozen encoders stay in eval mode: their batch-norm statistics must not drift with the LLM's batches
        (they did before this fix: a "frozen" encoder's saved running statistics differed from the run it came from)."""
        super().train(mode)
        if self.ecg_config.encoder_policy == "frozen":
            self.encoder.eval()
        if self.image_encoder is not None:
            self.image_encoder.eval()
        return self

    # ------------------------------------------------------------------------------------ forward
    def encode(self, ecg: torch.Tensor | None, ecg_mask: torch.Tensor | None, images: torch.Tensor | None = None,
               ecg_is_image: torch.Tensor | None = None) -> torch.Tensor | None:
        """Encoder tokens [E, N, D] of every ECG in prompt order (`encode_with_image_noise` without the noise)."""
        return self.encode_with_image_noise(ecg, ecg_mask, images, ecg_is_image)[0]

    def encode_with_image_noise(self, ecg: torch.Tensor | None, ecg_mask: torch.Tensor | None,
                                images: torch.Tensor | None = None, ecg_is_image: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Encoder tokens [E, N, D] of every ECG in prompt order: signals by the signal encoder, pictures by the
        image encoder (``ecg_is_image`` [E] says which is which); and the pictures' noise probabilities [pictures,
        entries] from the image quality head (None without pictures or head). Inputs move to the encoders' device
        and take their dtype, so a model loaded in bf16 on a GPU reads a processor's float32 CPU batch."""
        signal_weight = next(self.encoder.parameters())
        image_weight = signal_weight if self.image_encoder is None else next(self.image_encoder.parameters())
        ecg = None if ecg is None else ecg.to(signal_weight.device, signal_weight.dtype)
        ecg_mask = None if ecg_mask is None else ecg_mask.to(signal_weight.device)
        pixels = images  # as the processor gave them (float32): what the image quality head reads
        images = None if images is None else images.to(image_weight.device, image_weight.dtype)
        ecg_is_image = None if ecg_is_image is None else ecg_is_image.to(signal_weight.device)
        if ecg_is_image is None or not bool(ecg_is_image.any()):
            if ecg is None or ecg.shape[0] == 0:
                return None, None
            return self.encoder(ecg, ecg_mask), None
        if self.image_encoder is None:
            raise ImageNotSupportedError("this model has no image encoder: it reads ECG signals only, not pictures "
                                         "of printouts; send the signal file, or use a checkpoint with an image "
                                         "encoder (the shipped one has one)")
        if self.image_quality is None:
            from_images, image_noise = self.image_encoder(images), None
        elif images.dtype == torch.float32:
            from_images, kept = self.image_encoder.encode(images, keep=self.image_quality.layers)
            image_noise = self.image_quality(kept)
        else:  # a model cast to half precision: the head reads the float32 maps it was fitted on
            from_images = self.image_encoder(images)
            copy32 = self._image_quality_encoder.to(images.device)
            image_noise = self.image_quality(copy32.feature_maps(pixels.to(images.device, torch.float32),
                                                                 self.image_quality.layers))
        features = from_images.new_zeros(len(ecg_is_image), *from_images.shape[1:])
        features[ecg_is_image] = from_images
        if bool((~ecg_is_image).any()):
            features[~ecg_is_image] = self.encoder(ecg, ecg_mask).to(features.dtype)
        return features, image_noise

    def embed(self, input_ids: torch.Tensor, ecg: torch.Tensor | None, ecg_mask: torch.Tensor | None,
              images: torch.Tensor | None = None,
              ecg_is_image: torch.Tensor | None = None, ecg_named: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.ecg_token_id
        device = embeds.device
        features, image_noise = self.encode_with_image_noise(ecg, ecg_mask, images, ecg_is_image)
        n_ecgs = 0 if features is None else features.shape[0]
        expected = n_ecgs * self.tokens_per_ecg
        if int(slots.sum()) != expected:
            raise EcgTokenCountError(f"the prompts hold {int(slots.sum())} <ecg> placeholder tokens but {n_ecgs} "
                                     f"ECGs × {self.tokens_per_ecg} tokens = {expected} were given")
        if n_ecgs == 0:
            return embeds
        tokens = self.projector(features)
        if self.label_tokens is not None:
            labels = self.label_tokens(self.encoder.pool(features), ecg_named,
                                       self._noise(ecg, ecg_mask, ecg_is_image, image_noise, n_ecgs, device))
            tokens = torch.cat([tokens, labels.to(tokens.dtype)], dim=1)
        return embeds.masked_scatter(slots.unsqueeze(-1), tokens.to(embeds.dtype).reshape(-1, embeds.shape[-1]))

    def _noise(self, ecg, ecg_mask, ecg_is_image, image_noise, n_ecgs: int, device) -> torch.Tensor | None:
        """Noise probabilities [E, entries] of every ECG in prompt order: the signal-quality heads' for a signal, the
        image quality head's for a picture (NaN rows for a picture where the model has no such head)."""
        quality = self.label_tokens.quality if self.label_tokens is not None else None
        if quality is None or n_ecgs == 0:
            return None
        if ecg_is_image is None:
            ecg_is_image = torch.zeros(n_ecgs, dtype=torch.bool)
        ecg_is_image = ecg_is_image.to(device)
        out = torch.full((n_ecgs, quality.n_entries), float("nan"), device=device)
        signals = ~ecg_is_image
        if bool(signals.any()):
            if ecg_mask is None:
                ecg_mask = torch.ones(ecg.shape[:2], dtype=torch.bool)
            out[signals] = quality(ecg.to(device), ecg_mask.to(device)).to(out.dtype)
        if image_noise is not None:
            out[ecg_is_image] = image_noise.to(device, out.dtype)
        return out

    def forward(self, input_ids=None, attention_mask=None, ecg=None, ecg_mask=None, labels=None,
                sample_weight=None, images=None, ecg_is_image=None, ecg_named=None, inputs_embeds=None,
                position_ids=None, cache=None, use_cache=None, logits_to_keep=0, **llm_kwargs):
        """``sample_weight`` [B]: per-conversation loss weights (inverse-propensity de-biasing): each answer token
        counts with its conversation's weight, Σ w_i Σ_t l_it / Σ w_i n_i, so weights that are all equal give
        exactly the unweighted loss (the mean over answer tokens) and the arms differ in the weights alone.

        With labels and ``sparse_logits`` on (the default), the vocabulary projection runs only where a label
        is: an answer is a few tokens of a ~60-token prompt, and SmolLM2's 49k-word head over every position
        costs more than its transformer layers. The loss is the same; ``logits`` are then not returned.
        With ``share_prefix`` on too, the tokens every conversation of the batch begins with (the system prompt
        and the user header) run through the LLM once, not once per conversation (`_hidden_states`).
        With ``math_attention`` on too, a training loss on the CPU runs PyTorch's math attention instead of its
        flash kernel: the same function, and on ~60-token sequences the flash kernel's backward took ~15 % of a
        bf16 step on this project's 2-core CPU, the math one about a third of that."""
        if labels is None:
            # ``generate`` passes the prompt's embeddings (ECGs in place) once, then each new token with the cache
            if inputs_embeds is not None:
                embeds = inputs_embeds
            elif cache is not None and ecg is None and images is None:  # a decoding step: its new tokens only
                embeds = self.llm.get_input_embeddings()(input_ids)
            else:
                embeds = self.embed(input_ids, ecg, ecg_mask, images, ecg_is_image, ecg_named)
            if position_ids is None and attention_mask is not None:  # positions follow the mask: generation
                # batches are padded after their shared prefix
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1]:]
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep, **llm_kwargs)
        embeds = self.embed(input_ids, ecg, ecg_mask, images, ecg_is_image, ecg_named)
        if not self.sparse_logits:
            return self._dense_loss(embeds, attention_mask, labels, sample_weight)
        from transformers.modeling_outputs import CausalLMOutputWithPast

        base = self._base_llm()
        with self._training_attention(embeds):
            hidden = self._hidden_states(embeds, input_ids, attention_mask, labels)
        targets = labels[:, 1:]
        keep = targets != -100
        logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
        token_loss = nn.functional.cross_entropy(logits, targets[keep], reduction="none")
        if not token_loss.numel():
            loss = logits.sum() * 0.0
        elif sample_weight is None:
            loss = token_loss.mean()
        else:
            weight = sample_weight.to(token_loss.device, token_loss.dtype)[keep.nonzero()[:, 0]]
            loss = (token_loss * weight).sum() / weight.sum().clamp(min=1e-8)
        return CausalLMOutputWithPast(loss=loss)

    def _training_attention(self, embeds: torch.Tensor):
        """The attention kernel of a training forward (its backward follows the kernel chosen here). The math
        kernel keeps every layer's full attention matrix for the backward, so only short sequences use it.
        ``sdpa_kernel`` is a process-wide switch, undone when the forward's ``with`` ends."""
        if self.math_attention and embeds.device.type == "cpu" and embeds.shape[1] <= MATH_ATTENTION_MAX_TOKENS:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            return sdpa_kernel([SDPBackend.MATH])
        return contextlib.nullcontext()

    def _shared_prefix_length(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                              labels: torch.Tensor | None = None) -> int:
        """How many leading tokens every row shares: same token, attended, not an ECG slot, and no label in
        reach (the hidden state of position t predicts token t + 1, so the prefix ends before the first label)."""
        same = (input_ids == input_ids[:1]).all(0) & (input_ids[0] != self.ecg_token_id)
        if attention_mask is not None:
            same &= attention_mask.bool().all(0)
        labelled = (labels != -100).any(0).nonzero() if labels is not None else input_ids[:0]
        limit = int(labelled[0]) - 1 if labelled.numel() else input_ids.shape[1] - 1
        return min(int(same.int().cumprod(0).sum()), max(limit, 0))

    def _base_llm(self) -> nn.Module:
        """The causal LM under any PEFT wrapper (its decoder and output head)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def _run_prefix(self, embeds: torch.Tensor, n: int):
        """``(hidden [1, n, H], cache)``: the first ``n`` positions of the first row through the decoder."""
        from transformers import DynamicCache

        cache = DynamicCache()
        hidden = self._base_llm().get_decoder()(inputs_embeds=embeds[:1, :n], cache=cache,
                                                use_cache=True).last_hidden_state
        return hidden, cache

    def _hidden_states(self, embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       labels: torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states; a prefix common to the whole batch is computed for one row and its
        keys/values repeated for the others (the same numbers: positions and the causal mask are unchanged)."""
        decoder = self._base_llm().get_decoder()
        n = self._shared_prefix_length(input_ids, attention_mask, labels) if self.share_prefix else 0
        rows = embeds.shape[0]
        if rows < 2 or n < 2:
            return decoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        prefix, cache = self._run_prefix(embeds, n)
        cache.batch_repeat_interleave(rows)
        rest = decoder(inputs_embeds=embeds[:, n:], attention_mask=attention_mask, cache=cache,
                       use_cache=True).last_hidden_state
        return torch.cat([prefix.expand(rows, -1, -1), rest], dim=1)

    def _dense_loss(self, embeds, attention_mask, labels, sample_weight):
        """The loss through the LLM's full logits (the path before ``sparse_logits``; kept to check it)."""
        if sample_weight is None:
            return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask)
        logits, targets = out.logits[:, :-1].float(), labels[:, 1:]
        token_loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=-100, reduction="none").view(targets.shape)
        weight = (targets != -100).float() * sample_weight.to(token_loss.device, token_loss.dtype)[:, None]
        out.loss = (token_loss * weight).sum() / weight.sum().clamp(min=1e-8)
        return out

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, ecg=None, ecg_mask=None, max_new_tokens: int = 64,
                 images=None, ecg_is_image=None, ecg_named=None, **kwargs):
        """New tokens only (greedy by default), with the KV cache."""
        embeds = self.embed(input_ids, ecg, ecg_mask, images, ecg_is_image, ecg_named)
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("suppress_tokens", [self.ecg_token_id])  # never emit the placeholder itself
        expanded = kwargs.get("num_beams", 1) > 1 or kwargs.get("num_return_sequences", 1) > 1
        if "cache" not in kwargs and "past_key_values" not in kwargs and not expanded:
            cache = self._prompt_prefix_cache(input_ids, attention_mask, embeds)
            if cache is not None:
                kwargs["cache"] = cache
        return super().generate(inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                use_cache=True, **kwargs)

    def _weights_state(self) -> tuple:
        """What a cached prefix depends on besides its tokens: placement, precision, mode and the LLM's weights.
        An optimizer step bumps a parameter's version, a reload or ``.to()`` moves its storage, and PEFT's merge
        or disabling of the adapter (which do neither) flip flags on the LoRA layers."""
        sources = getattr(self, "_state_sources", None)
        if sources is None or sources[0] is not self.llm:  # walking the module tree costs more than the check
            flagged = [m for m in self.llm.modules() if hasattr(m, "merged") or hasattr(m, "disable_adapters")]
            sources = (self.llm, list(self.llm.parameters()), flagged)
            self._state_sources = sources
        _, params, flagged = sources
        flags = sum(bool(getattr(m, "merged", False)) + 2 * bool(getattr(m, "disable_adapters", False))
                    for m in flagged)
        return (params[0].device, params[0].dtype, self.llm.training, flags,
                sum(p._version for p in params), sum(p.data_ptr() for p in params))

    def merge_adapter_for_inference(self) -> None:
        """Fold the LoRA adapter into the LLM's weights (W + BA), so an answer runs plain linear layers instead of
        base + adapter: the same function, fewer operations. For serving only: a merged adapter no longer trains."""
        if self.ecg_config.llm_policy == "lora" and hasattr(self.llm, "merge_adapter"):
            self.llm.merge_adapter()

    PREFIX_MEMO_SIZE = 8  # distinct prompt starts kept: one ECG, two ECGs, the report, the chat UI's, ...
    _prefix_memo: tuple | None = None  # (weights state, {start tokens: keys/values}), most recent last
    _prefix_lock = threading.Lock()    # one for the class: a model stays deep-copyable and picklable

    def _prompt_prefix_cache(self, input_ids, attention_mask, embeds):
        """Keys/values of the tokens every prompt of the batch begins with (system prompt, user header, an ECG tag),
        computed once and reused by later calls while the LLM is unchanged (`_weights_state`): a served answer then
        runs only its own tokens. The last few distinct starts are kept, so questions about one ECG and comparisons
        of two, asked in turn, both reuse theirs. None when the prompts share no prefix."""
        import copy

        n = self._shared_prefix_length(input_ids, attention_mask)
        if n < 2:
            return None
        tokens, state = tuple(input_ids[0, :n].tolist()), self._weights_state()
        with self._prefix_lock:  # answers of other threads read and fill the same memo
            memo = self._prefix_memo if self._prefix_memo is not None and self._prefix_memo[0] == state else None
            cached = memo[1].get(tokens) if memo is not None else None
        if cached is None:
            cached = self._run_prefix(embeds, n)[1]
            with self._prefix_lock:
                if self._prefix_memo is None or self._prefix_memo[0] != state:
                    self._prefix_memo = (state, OrderedDict())  # the weights changed: every start is stale
                starts = self._prefix_memo[1]
                starts[tokens] = cached
                while len(starts) > self.PREFIX_MEMO_SIZE:
                    starts.popitem(last=False)
        else:
            with self._prefix_lock:
                if memo is self._prefix_memo and tokens in memo[1]:
                    memo[1].move_to_end(tokens)
        cache = copy.deepcopy(cached)
        if embeds.shape[0] > 1:
            cache.batch_repeat_interleave(embeds.shape[0])
        return cache

    # ------------------------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path, processor: EcgProcessor | None = None, name: str | None = None,
                        **kwargs) -> Path:
        """One self-describing folder: transformers' ``config.json`` and ``model.safetensors`` (every weight but the
        base LLM's: a LoRA model stores its adapter, a ``full`` one its whole LLM), the generation settings, the
        processor (tokenizer, chat template, ECG preparation) and the image encoder's page check. ``name``: what
        servers call the model (`ecgllm.serving.assistant.model_identity`), e.g. its training run's."""
        directory = Path(directory)
        self.config.model = asdict(self.ecg_config)
        self.config.label_vocab = self.label_vocab or None
        self.config.ecgllm_version = __version__
        if name:
            self.config.name = name
        base = set() if self.ecg_config.llm_policy == "full" else {
            key for key in self.state_dict() if key.startswith("llm.") and "lora_" not in key}
        self._keys_to_ignore_on_save = base  # the embedded base's own weights (and its deterministic <ecg> row)
        from ecgllm.models.llm import quiet_transformers
        from ecgllm.models.model_folder import is_legacy, remove_legacy_files

        older_layout = (directory / "config.json").exists() and is_legacy(directory)
        with quiet_transformers():  # a training run saves often: no progress bar of transformers' for each
            super().save_pretrained(directory, **kwargs)
        if older_layout:  # only once the new files are written, and only an ecgllm model folder's own parts
            remove_legacy_files(directory)
        if processor is not None:
            processor.save_pretrained(directory)
        from ecgllm.models.image_quality import IMAGE_QUALITY_FILE
        from ecgllm.models.page_check import PAGE_CHECK_FILE

        # a check or head left from an earlier save into this folder would be another model's
        for part, file in ((self.page_check, PAGE_CHECK_FILE), (self.image_quality, IMAGE_QUALITY_FILE)):
            if part is not None:
                part.save(directory)
            else:
                (directory / file).unlink(missing_ok=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, llm: nn.Module | None = None,
                        device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "EcgLanguageModel":
        """Load a folder written by `save_pretrained` (or in the layout before it, `model_folder`) in eval mode, on
        ``device`` in ``dtype`` (default: the CPU in float32); ``llm``: the base model (e.g. a tiny one in tests).
        Its processor: ``EcgProcessor.from_pretrained(directory)``.

        The model is built on its base LLM, read by transformers from the base's own folder, and the checkpoint's
        weights are loaded over it: transformers' own loader would build the model on the meta device and treat
        every base weight, absent from the checkpoint by design, as missing and to be initialised anew."""
        from ecgllm.models import model_folder
        from ecgllm.models.image_quality import ImageQuality
        from ecgllm.models.page_check import PAGE_CHECK_FILE, PageCheck

        directory = Path(directory)
        check_card(directory, "language_model", EcgProcessor.read_prep(directory))
        own = model_folder.own_llm_folder(directory)
        if llm is None and own is not None:
            from ecgllm.models.llm import load_causal_lm

            llm = load_causal_lm(own)
        model = cls(model_folder.read_config(directory), llm=llm)
        model_folder.load_weights(model, directory)
        for name, parameter in model.llm.named_parameters():  # a loaded adapter answers; training unfreezes it
            if "lora_" in name:
                parameter.requires_grad_(False)
        model._check_label_tokens(directory)
        if model.image_encoder is not None:
            model.set_page_check(PageCheck.load(directory), f"{directory}/{PAGE_CHECK_FILE}")
            model.set_image_quality(ImageQuality.load(directory), f"{directory}/image_quality.safetensors")
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def _check_label_tokens(self, directory: Path) -> None:
        """The label tokens' fitted parts exist where the configuration asks for them (an incomplete folder stops)."""
        if self.label_tokens is None:
            return
        quality = self.label_tokens.quality
        if quality is not None and not quality.fitted:
            raise ValueError(f"{directory}: config.json asks for signal_quality but the checkpoint holds no fitted "
                             f"noise heads (the folder is incomplete)")
        if quality is not None:
            quality.check_rate(EcgProcessor.read_prep(directory)["fs"], f"{directory} (an inconsistent folder)")
        if self.ecg_config.balanced_named_labels and not self.label_tokens.priors_fitted:
            raise ValueError(f"{directory}: config.json asks for balanced_named_labels but the checkpoint holds no "
                             f"fitted priors (the folder is incomplete)")


def _read_base_llm(parts: EcgLMConfig) -> nn.Module:
    """The base causal LM ``parts.llm`` names, in float32 on the CPU."""
    from ecgllm.models.llm import load_llm

    return load_llm(parts.llm)[0]
