"""Label tokens: a few ECG tokens that name, in the LLM's own word space, what the encoder's classifier sees.

A projector alone must be learned from scratch before the LLM can read anything from the ECG; on the
compute this project trains on (a CPU, thousands of samples rather than hundreds of thousands) the LLM then
answers from the question alone. Label tokens give it a head start grounded in the signal: the pretrained
encoder's classifier head (frozen) scores every PTB-XL statement, and each of the ``k`` most likely labels
becomes one token, the mean input embedding of the label's name plus a learned embedding of the classifier's
confidence. "Does this ECG show atrial fibrillation?" can then be answered by matching the question's words
against the ECG's tokens, a mechanism the LLM already has, instead of decoding a new code. The tokens are
computed from the encoder's pooled tokens, so any encoder that reproduces those (the image encoder) gets them
too, and a random ECG gives other labels: the random-ECG probe still measures reliance on the signal.

Named-label tokens (``named`` > 0) answer the question's own statement. On ECG-QA valid the classifier ranks
the statement a verify question names with AUC 0.94, yet a model with top-k tokens alone answered those
questions at chance (balanced accuracy 0.51): when the statement is not among the k, or low in them, nothing
tells the LLM how likely it is. The processor finds the label names the question mentions
(`find_named_labels`); each gets one token whatever the label's rank: its name's embedding scaled by the
classifier's probability for it, plus learned embeddings of the slot and of that probability. A likely statement
thus looks like a top-k label token from the first step (a reading the model has already learned), an unlikely
one fades towards a blank token. (A first version added the name at full strength and left the probability to a
zero-initialised embedding: after 300 steps that embedding was still ~3 % of a token's norm, and the named
statement's answers were at chance.) Unused slots hold a learned "nothing named" token, so every prompt has the
same number of ECG tokens.

Noise names ("baseline drift", "static noise in lead V3", "any kind of noises") are named labels too when the
model has signal-quality heads (`ecgllm.models.signal_quality`): their probability comes from those heads, read
from the signal itself, and their token is built the same way. A picture of a printout has no signal to read: its
noise slots are filled by the checkpoint's image quality head, which imitates those heads from the page
(`ecgllm.models.image_quality`), or stay blank where it has none.

Balanced named probabilities (`fit_priors`, recipe key ``model.balanced_named_labels``): each named label's
probability is shifted to what it would be if the label were as common as its absence, p' = sigmoid(logit p −
logit π), with π the label's share of the training records. For a calibrated p, answering "yes" when p > π is the
rule with the best balanced accuracy (the project's encoders train their classifier with a plain, unweighted
loss, which keeps p roughly calibrated; a head trained with class weights is not, and the shift then over-corrects);
after the shift that threshold is 0.5 for every label, so the LLM learns one
reading instead of one threshold per statement. Without it a rare statement or a noise in one lead keeps a small
probability even when present (on generated ECG-QA valid questions of template 26, "Does this ECG show <noise> in
lead <lead>?", the model's p(yes) ranked the ECGs with AUC 0.91 while its answers had balanced accuracy 0.55). Measured
as a 400-step continuation of the shipped model against a plain twin, it answered worse
(`docs/results/ecgqa_selection_continuations.md`): the default model does not use it.
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn

from ecgllm.models.signal_quality import SignalQuality

NOT_NAMED = -1  # a named-label slot with no label in it


class LabelTokens(nn.Module):
    def __init__(self, in_dim: int, n_labels: int, hidden: int, k: int, named: int = 0,
                 quality: SignalQuality | None = None, balanced: bool = False) -> None:
        super().__init__()
        if not 0 < k <= n_labels:
            raise ValueError(f"label_tokens must lie in 1..{n_labels} (the classifier's labels), got {k}")
        if named < 0:
            raise ValueError(f"named_label_tokens must be 0 or more, got {named}")
        self.k = k
        self.named = named
        self.head = nn.Linear(in_dim, n_labels)
        self.head.requires_grad_(False)  # the encoder pretraining's calibrated classifier, kept as trained
        self.register_buffer("name_embeddings", torch.zeros(n_labels, hidden))
        self.confidence = nn.Linear(1, hidden)
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)
        if named:
            # zero at start: a named token begins as its name scaled by the probability (see `forward`)
            self.named_confidence = nn.Linear(1, hidden)
            nn.init.zeros_(self.named_confidence.weight)
            nn.init.zeros_(self.named_confidence.bias)
            self.named_slots = nn.Parameter(torch.zeros(named, hidden))  # which slot: the question's 1st, 2nd, ...
            self.not_named = nn.Parameter(torch.zeros(hidden))           # a slot the question left empty
        elif quality is not None:
            raise ValueError("signal_quality needs named_label_tokens (its outputs fill the named slots)")
        elif balanced:
            raise ValueError("balanced named labels need named_label_tokens")
        self.quality = quality
        if quality is not None:
            self.register_buffer("quality_name_embeddings", torch.zeros(quality.n_entries, hidden))
        self.balanced = balanced
        if balanced:
            # logit of each named entry's training prevalence (see `fit_priors`), kept fp32 (`_apply`); 0 records:
            # not fitted yet. Only a balanced model has them, so older checkpoints resume and export as they were.
            entries = n_labels + (quality.n_entries if quality is not None else 0)
            self.register_buffer("named_prior_logit", torch.zeros(entries))
            self.register_buffer("named_prior_records", torch.zeros((), dtype=torch.long))

    @property
    def n_tokens(self) -> int:
        return self.k + self.named

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Every loader (model folders, step checkpoints, exports) reads saved priors the same way: priors never
        counted (a run of a version that gave every named model the buffers) are nothing to load into an unbalanced
        model, and priors counted for another set of named entries (a start without noise heads) are refitted."""
        logit_key, records_key = prefix + "named_prior_logit", prefix + "named_prior_records"
        saved = state_dict.get(logit_key)
        if saved is not None:
            unfitted = int(state_dict.get(records_key, torch.zeros(())).sum()) == 0
            if (not self.balanced and unfitted) or (self.balanced and saved.shape != self.named_prior_logit.shape):
                state_dict.pop(logit_key)
                state_dict.pop(records_key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved weights; a checkpoint from before named-label tokens leaves those at their start values (see
        `_load_from_state_dict` for saved priors)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        new = {key for key in self.state_dict() if key.startswith(("named_", "not_named", "quality"))}
        if unexpected or set(missing) - new:
            raise ValueError(f"label tokens do not fit this model: missing {sorted(set(missing) - new)}, "
                             f"unexpected {sorted(unexpected)}")

    @property
    def priors_fitted(self) -> bool:
        return self.balanced and int(self.named_prior_records) > 0

    @torch.no_grad()
    def fit_priors(self, prevalence: torch.Tensor, records: int) -> None:
        """Balance the named probabilities by each entry's share ``prevalence`` [named entries] of ``records``
        training records (smoothed away from 0 and 1 by the caller)."""
        if not self.balanced:
            raise ValueError("this model's named labels are not balanced (model.balanced_named_labels)")
        if prevalence.shape != self.named_prior_logit.shape:
            raise ValueError(f"{prevalence.shape[0]} prevalences for {self.named_prior_logit.shape[0]} named entries")
        if records <= 0 or not bool(((prevalence > 0) & (prevalence < 1)).all()):
            raise ValueError("prevalences must lie strictly between 0 and 1, from at least one record")
        self.named_prior_logit.copy_(torch.logit(prevalence.double()).float())
        self.named_prior_records.fill_(records)

    def _apply(self, fn, recurse: bool = True):
        """The priors stay fp32 when the model is cast (bf16 would move a logit by ~0.03)."""
        before = self._buffers.get("named_prior_logit")
        super()._apply(fn, recurse)
        after = self._buffers.get("named_prior_logit")
        if before is not None and after.dtype != before.dtype:
            self._buffers["named_prior_logit"] = before.to(after.device)
        return self

    def named_vocabulary(self, label_names: list[str]) -> list[str]:
        """Every name a named slot can hold, in index order: the classifier's labels, then the noise entries."""
        return list(label_names) + (self.quality.entry_names() if self.quality is not None else [])

    @torch.no_grad()
    def set_names(self, names: list[str], tokenizer, input_embeddings: nn.Embedding) -> None:
        """Each label's token starts as the mean embedding of its name, rescaled to a typical embedding norm (the
        noise entries' too, from their own names)."""
        if len(names) != self.name_embeddings.shape[0]:
            raise ValueError(f"{len(names)} label names for {self.name_embeddings.shape[0]} classifier outputs")
        for row, name in enumerate(names):
            self.name_embeddings[row] = _name_embedding(name, tokenizer, input_embeddings)
        self.set_quality_names(tokenizer, input_embeddings)

    @torch.no_grad()
    def set_quality_names(self, tokenizer, input_embeddings: nn.Embedding) -> None:
        """The noise entries' name embeddings (a model started from a checkpoint without them needs these)."""
        if self.quality is not None:
            for row, name in enumerate(self.quality.entry_names()):
                self.quality_name_embeddings[row] = _name_embedding(name, tokenizer, input_embeddings)

    def forward(self, pooled: torch.Tensor, named: torch.Tensor | None = None,
                quality: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` [B, D] encoder features → [B, k (+ named), hidden] tokens: the k most likely labels, most
        likely first, then one token per named-label slot. ``named`` [B, slots]: indices into
        `named_vocabulary`, `NOT_NAMED` where the question names none (None: no slot filled). ``quality``
        [B, noise entries]: the noise probabilities (NaN rows: none read, e.g. a picture without an image quality
        head)."""
        logits = self.head(pooled)
        top = logits.topk(self.k, dim=-1)
        confidence = torch.sigmoid(top.values).unsqueeze(-1)
        tokens = self.name_embeddings[top.indices] + self.confidence(confidence.to(self.confidence.weight.dtype))
        if not self.named:
            return tokens
        if named is None:
            named = torch.full((pooled.shape[0], self.named), NOT_NAMED, dtype=torch.long, device=pooled.device)
        named = named.to(pooled.device)
        names = self.name_embeddings
        if self.priors_fitted:  # shifted on the classifier's own logits, in fp32
            probabilities = torch.sigmoid(logits.float() - self.named_prior_logit[:logits.shape[1]]).to(logits.dtype)
        else:
            probabilities = torch.sigmoid(logits)
        if self.quality is not None:
            if quality is None:
                quality = logits.new_full((logits.shape[0], self.quality.n_entries), float("nan"))
            if self.priors_fitted:  # NaN (no signal) stays NaN
                eps = 1e-6
                noise_logits = torch.logit(quality.float().clamp(eps, 1 - eps))
                quality = torch.sigmoid(noise_logits - self.named_prior_logit[logits.shape[1]:])
            probabilities = torch.cat([probabilities, quality.to(probabilities.dtype)], dim=1)
            names = torch.cat([names, self.quality_name_embeddings], dim=0)
        if int(named.max()) >= probabilities.shape[1]:
            raise ValueError(f"a named-label index {int(named.max())} is beyond this model's {probabilities.shape[1]} "
                             f"named labels (the processor's vocabulary does not fit the model)")
        index = named.clamp(min=0)
        probability = probabilities.gather(1, index)
        filled = (named >= 0) & ~probability.isnan()
        probability = probability.nan_to_num(0.0).unsqueeze(-1)
        asked = (probability.to(names.dtype) * names[index] + self.named_slots
                 + self.named_confidence(probability.to(self.named_confidence.weight.dtype)))
        asked = torch.where(filled.unsqueeze(-1), asked, self.not_named.expand_as(asked))
        return torch.cat([tokens, asked.to(tokens.dtype)], dim=1)


def _name_embedding(name: str, tokenizer, input_embeddings: nn.Embedding) -> torch.Tensor:
    """Mean input embedding of ``name``'s tokens, rescaled to the table's typical norm."""
    table = input_embeddings.weight.detach().float()
    vector = table[torch.tensor(tokenizer(" " + name, add_special_tokens=False)["input_ids"])].mean(0)
    return vector * table.norm(dim=-1).mean() / vector.norm().clamp(min=1e-6)


@functools.lru_cache(maxsize=8)
def _name_patterns(names: tuple[str, ...]) -> list[tuple[int, re.Pattern]]:
    """Whole-word, case-insensitive patterns of the names, longest first (compiled once per vocabulary)."""
    order = sorted(range(len(names)), key=lambda i: -len(names[i]))
    return [(i, re.compile(r"(?<!\w)" + re.escape(names[i].lower().strip()) + r"(?!\w)"))
            for i in order if names[i].strip()]


def find_named_labels(text: str, names: list[str], slots: int) -> list[int]:
    """Indices (into ``names``) of the label names ``text`` mentions, in the order they appear, ``slots`` long
    (padded with `NOT_NAMED`). Matching is case-insensitive on whole words; where names overlap the longest wins
    ("non-specific intraventricular conduction disturbance (block)", not "conduction disturbance")."""
    lowered = text.lower()
    spans: list[tuple[int, int, int]] = []  # (start, end, label)
    for index, pattern in _name_patterns(tuple(names)):
        for match in pattern.finditer(lowered):
            start, end = match.span()
            if all(end <= s or start >= e for s, e, _ in spans):
                spans.append((start, end, index))
    found: list[int] = []
    for _, _, index in sorted(spans):
        if index not in found:
            found.append(index)
    return (found + [NOT_NAMED] * slots)[:slots]
