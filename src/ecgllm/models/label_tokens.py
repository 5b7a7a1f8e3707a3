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
"""

from __future__ import annotations

import torch
from torch import nn


class LabelTokens(nn.Module):
    def __init__(self, in_dim: int, n_labels: int, hidden: int, k: int) -> None:
        super().__init__()
        if not 0 < k <= n_labels:
            raise ValueError(f"label_tokens must lie in 1..{n_labels} (the classifier's labels), got {k}")
        self.k = k
        self.head = nn.Linear(in_dim, n_labels)
        self.head.requires_grad_(False)  # the encoder pretraining's calibrated classifier, kept as trained
        self.register_buffer("name_embeddings", torch.zeros(n_labels, hidden))
        self.confidence = nn.Linear(1, hidden)
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)

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

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` [B, D] encoder features → [B, k, hidden] tokens, most likely label first."""
        top = self.head(pooled).topk(self.k, dim=-1)
        confidence = torch.sigmoid(top.values).unsqueeze(-1)
        return self.name_embeddings[top.indices] + self.confidence(confidence.to(self.confidence.weight.dtype))
