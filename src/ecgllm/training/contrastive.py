"""Contrastive ECG–text pretraining (CLIP-style) on PTB-XL: each ECG is pulled towards the text written about
it (its free-text report where the metadata has one, and/or the descriptions of its SCP statements) and away
from the other texts in the batch.

The text tower is deliberately small: character n-gram TF-IDF (the reports are mostly German, the statement
descriptions English) reduced by truncated SVD, then a trainable two-layer MLP. Many records share the same
text ("sinus rhythm; normal ECG"), so targets are soft: every batch item with the identical text counts as a
positive instead of a false negative.

The encoder it produces is meant as the starting point of supervised pretraining (``init_encoder``);
``benchmarks/encoder_compare.py`` compares encoders on fold 10.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ecgllm.datasets.split_policy import write_training_records
from ecgllm.models.encoders import build_encoder
from ecgllm.training.engine import Task
from ecgllm.training.pretrain_encoder import (check_normalize, load_ptbxl_arrays, random_crops, save_encoder, start_run,
                                              write_encoder_card)

TEXT_SOURCES = ("report", "statements", "both")


@dataclass
class ContrastiveConfig:
    output_dir: str
    ecg_cache: str
    ptbxl: str
    encoder: str = "resnet1d"
    encoder_kwargs: dict = field(default_factory=dict)
    text: str = "both"                 # "report", "statements" or "both"
    text_features: int = 256           # SVD components of the TF-IDF text features
    embed_dim: int = 128
    epochs: int = 10
    batch_size: int = 256              # in-batch negatives: larger is better, memory allowing
    lr: float = 3e-3
    weight_decay: float = 1e-4
    normalize: str = "mv"
    crop_s: float = 2.5
    exclude_ids_file: str | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"               # "auto" uses a CUDA GPU when PyTorch sees one
    mixed_precision: str = "no"        # "bf16": autocast the forward passes

    def __post_init__(self) -> None:
        if self.text not in TEXT_SOURCES:
            raise ValueError(f"text must be one of {TEXT_SOURCES}, got {self.text!r}")
        check_normalize(self.normalize)


def record_texts(ptbxl, ids: np.ndarray, source: str) -> list[str]:
    """The text paired with each record ('' when the record has none of the requested kind)."""
    descriptions = ptbxl.statements["description"].to_dict()
    has_report = "report" in ptbxl.table.columns
    texts = []
    for ecg_id in ids:
        parts = []
        if source in ("report", "both") and has_report:
            report = ptbxl.table.at[int(ecg_id), "report"]
            if isinstance(report, str) and report.strip():
                parts.append(report.strip().lower())
        if source in ("statements", "both"):
            codes = sorted(ptbxl.labels(int(ecg_id), "all"))
            parts.append("; ".join(descriptions.get(c, c) for c in codes))
        texts.append(" | ".join(p for p in parts if p))
    return texts


def text_features(texts: list[str], fit_rows: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """TF-IDF (character 3-5-grams) -> truncated SVD -> standardised, fitted on the training rows only."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=3, sublinear_tf=True)
    vectorizer.fit([texts[i] for i in fit_rows])
    matrix = vectorizer.transform(texts)
    n_components = min(n_components, matrix.shape[1] - 1)
    svd = TruncatedSVD(n_components, random_state=seed).fit(matrix[fit_rows])
    feats = svd.transform(matrix)
    mean, std = feats[fit_rows].mean(0), feats[fit_rows].std(0) + 1e-6
    return ((feats - mean) / std).astype(np.float32)


class ECGTextModel(nn.Module):
    def __init__(self, encoder: nn.Module, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.ecg_proj = nn.Linear(encoder.dim, embed_dim)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, 2 * embed_dim), nn.GELU(), nn.Linear(2 * embed_dim, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, ecg: torch.Tensor, text: torch.Tensor,
                lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        e = F.normalize(self.ecg_proj(self.encoder.pool(self.encoder(ecg, lead_mask))), dim=-1)
        t = F.normalize(self.text_proj(text), dim=-1)
        return self.logit_scale.clamp(max=math.log(100)).exp() * e @ t.T


def clip_loss(logits: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy with soft targets: items sharing a text are all positives."""
    same = (text_ids[:, None] == text_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-targets * F.log_softmax(logits.T, 1), 1).mean())


class ContrastiveTask(Task):
    """ECG crops against their texts' features: the contrastive stage's `Task`. Each process's share of a
    batch is its own set of in-batch negatives."""

    label = "contrastive"

    def __init__(self, config: ContrastiveConfig, signals: np.ndarray, masks: np.ndarray, feats: np.ndarray,
                 text_ids: np.ndarray, train: np.ndarray, valid: np.ndarray, crop: int, accelerator) -> None:
        self.config, self.signals, self.masks, self.feats, self.text_ids = config, signals, masks, feats, text_ids
        self.train, self.valid, self.crop, self.accelerator = train, valid, crop, accelerator
        self.batches_per_epoch = len(train) // config.batch_size  # full batches: the loss needs negatives

    def epoch_batches(self, epoch: int):
        rng = np.random.default_rng([self.config.seed, epoch])
        order = self.train[rng.permutation(len(self.train))]
        offsets = rng.integers(0, self.signals.shape[-1] - self.crop + 1, size=len(order))
        size = self.config.batch_size
        for b in range(self.batches_per_epoch):
            rows, offs = order[b * size:(b + 1) * size], offsets[b * size:(b + 1) * size]
            yield (random_crops(self.signals, rows, offs, self.crop), torch.from_numpy(self.masks[rows]),
                   torch.from_numpy(self.feats[rows]), torch.from_numpy(self.text_ids[rows]))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        ecg, lead_mask, text, text_ids = batch
        return clip_loss(model(ecg, text, lead_mask).float(), text_ids)

    @torch.no_grad()
    def metrics(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """The loss on fold 9's centre crops, in full batches only (the loss depends on the batch size)."""
        model.eval()
        start, size, device = (self.signals.shape[-1] - self.crop) // 2, self.config.batch_size, self.accelerator.device
        losses = []
        for i in range(0, len(self.valid) - size + 1, size):
            r = self.valid[i:i + size]
            with self.accelerator.autocast():
                logits = model(torch.from_numpy(self.signals[r, :, start:start + self.crop]).to(device),
                               torch.from_numpy(self.feats[r]).to(device), torch.from_numpy(self.masks[r]).to(device))
            losses.append(clip_loss(logits.float(), torch.from_numpy(self.text_ids[r]).to(device)).item())
        return {"valid_loss": round(float(np.mean(losses)), 4) if losses else float("nan")}


def pretrain_contrastive(config: ContrastiveConfig, progress: bool = True, resume_anyway: bool = False) -> dict:
    from ecgllm.training.engine import Schedule, prepare_run, run_training, stage_accelerator

    accelerator = stage_accelerator(config.device, config.mixed_precision)
    out = start_run(config.output_dir, config.seed, config.threads)
    data, ptbxl = load_ptbxl_arrays(config.ecg_cache, config.ptbxl, config.normalize, config.exclude_ids_file,
                                    stage="encoder_contrastive")
    texts = record_texts(ptbxl, data.ids, config.text)
    has_text = np.array([bool(t) for t in texts])
    train, valid = data.train[has_text[data.train]], data.valid[has_text[data.valid]]
    feats = text_features(texts, train, config.text_features, config.seed)
    _, text_ids = np.unique(np.array(texts, dtype=object).astype(str), return_inverse=True)
    task = ContrastiveTask(config, data.signals, data.masks, feats, text_ids, train, valid,
                           int(config.crop_s * data.fs), accelerator)

    encoder = build_encoder(config.encoder, **config.encoder_kwargs)
    model = ECGTextModel(encoder, feats.shape[1], config.embed_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr,
                                                    total_steps=config.epochs * task.batches_per_epoch)
    run = prepare_run(accelerator, model, optimizer, scheduler, out, config.seed)
    history = run_training(run, task, Schedule(epochs=config.epochs), config, progress, resume_anyway)
    if run.is_main:
        meta = save_encoder(out, run.trained.encoder.cpu(), config.encoder, config.encoder_kwargs, config.normalize,
                            data.fs, data.prep)
        result = {"encoder": config.encoder, "text": config.text, "train_pairs": int(len(train)),
                  "excluded_by_split_policy": data.excluded_by_policy, "valid_pairs": int(len(valid)),
                  "distinct_train_texts": int(len(np.unique(text_ids[train]))), "history": history,
                  "config": asdict(config)}
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        write_training_records(out, "encoder_contrastive", data.ids[train])
        write_encoder_card(out, config, meta, run.trained.encoder, None, {"valid_loss": history[-1]["valid_loss"]})
    accelerator.wait_for_everyone()
    return json.loads((out / "result.json").read_text())
