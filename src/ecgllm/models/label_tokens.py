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
"""

from __future__ import annotations

import re

import torch
from torch import nn

NOT_NAMED = -1  # a named-label slot with no label in it


class LabelTokens(nn.Module):
    def __init__(self, in_dim: int, n_labels: int, hidden: int, k: int, named: int = 0) -> None:
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

    @property
    def n_tokens(self) -> int:
        return self.k + self.named

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load saved weights; a checkpoint from before named-label tokens leaves those at their start values."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        new = {key for key in self.state_dict() if key.startswith(("named_", "not_named"))}
        if unexpected or set(missing) - new:
            raise ValueError(f"label tokens do not fit this model: missing {sorted(set(missing) - new)}, "
                             f"unexpected {sorted(unexpected)}")

    @torch.no_grad()
    def set_names(self, names: list[str], tokenizer, input_embeddings: nn.Embedding) -> None:
        """Each label's token starts as the mean embedding of its name, rescaled to a typical embedding norm."""
        if len(names) != self.name_embeddings.shape[0]:
            raise ValueError(f"{len(names)} label names for {self.name_embeddings.shape[0]} classifier outputs")
        table = input_embeddings.weight.detach().float()
        typical = table.norm(dim=-1).mean()
        for row, name in enumerate(names):
            ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
            vector = table[torch.tensor(ids, dtype=torch.long)].mean(0)
            self.name_embeddings[row] = vector * typical / vector.norm().clamp(min=1e-6)

    def forward(self, pooled: torch.Tensor, named: torch.Tensor | None = None) -> torch.Tensor:
        """``pooled`` [B, D] encoder features → [B, k (+ named), hidden] tokens: the k most likely labels, most
        likely first, then one token per named-label slot. ``named`` [B, slots]: label indices, `NOT_NAMED`
        where the question names none (None: no slot filled)."""
        logits = self.head(pooled)
        top = logits.topk(self.k, dim=-1)
        confidence = torch.sigmoid(top.values).unsqueeze(-1)
        tokens = self.name_embeddings[top.indices] + self.confidence(confidence.to(self.confidence.weight.dtype))
        if not self.named:
            return tokens
        if named is None:
            named = torch.full((pooled.shape[0], self.named), NOT_NAMED, dtype=torch.long, device=pooled.device)
        named = named.to(pooled.device)
        index = named.clamp(min=0)
        probability = torch.sigmoid(logits.gather(1, index)).unsqueeze(-1)
        asked = (probability.to(self.name_embeddings.dtype) * self.name_embeddings[index] + self.named_slots
                 + self.named_confidence(probability.to(self.named_confidence.weight.dtype)))
        asked = torch.where((named >= 0).unsqueeze(-1), asked, self.not_named.expand_as(asked))
        return torch.cat([tokens, asked.to(tokens.dtype)], dim=1)


def find_named_labels(text: str, names: list[str], slots: int) -> list[int]:
    """Indices (into ``names``) of the label names ``text`` mentions, in the order they appear, ``slots`` long
    (padded with `NOT_NAMED`). Matching is case-insensitive on whole words; where names overlap the longest wins
    ("non-specific intraventricular conduction disturbance (block)", not "conduction disturbance")."""
    lowered = text.lower()
    spans: list[tuple[int, int, int]] = []  # (start, end, label)
    for index in sorted(range(len(names)), key=lambda i: -len(names[i])):
        name = names[index].lower().strip()
        if not name:
            continue
        for match in re.finditer(r"(?<!\w)" + re.escape(name) + r"(?!\w)", lowered):
            start, end = match.span()
            if all(end <= s or start >= e for s, e, _ in spans):
                spans.append((start, end, index))
    found: list[int] = []
    for _, _, index in sorted(spans):
        if index not in found:
            found.append(index)
    return (found + [NOT_NAMED] * slots)[:slots]
