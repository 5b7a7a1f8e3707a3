"""Encoder pretraining on PTB-XL: multi-label classification of the 71 SCP statements and the 5
diagnostic superclasses from random crops (2.5 s and 5 s in the recipe); scored on whole records by averaging
sliding windows.

Split discipline: PTB-XL folds 1–8 train, 9 valid (model selection), 10 test. ``exclude_ids`` removes
ECGs from training, e.g. every ECG-QA test ECG when the encoder will answer ECG-QA questions.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ecgllm.datasets.split_policy import load_policy, write_training_records
from ecgllm.models.encoders import build_encoder
from ecgllm.training.engine import Task
from ecgllm.training.recipes import resolved

if TYPE_CHECKING:
    from ecgllm.datasets.ptbxl import PTBXL


NORMALIZATIONS = ("zscore", "mv")


def check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def crop_samples(crop_s: float | list[float], fs: float) -> list[int]:
    """Crop length(s) of a recipe's ``crop_s`` (seconds, one or a list) in samples."""
    return [int(c * fs) for c in (crop_s if isinstance(crop_s, list) else [crop_s])]


@dataclass
class EncoderPretrainConfig:
    output_dir: str
    ecg_cache: str                     # 100 Hz cache from `ecgllm data prepare`
    ptbxl: str                         # folder with ptbxl_database.csv or ptbxl_labels.csv
    encoder: str = "resnet1d"
    encoder_kwargs: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    normalize: str = "zscore"          # "zscore" per lead and record, or "mv" (keeps absolute voltage)
    crop_s: float | list[float] = 2.5  # a list trains on crops of several lengths (one length per batch)
    eval_stride_s: float = 1.25
    exclude_ids_file: str | None = None  # e.g. ECG-QA test_ecgs.tsv (second column = ecg_id)
    init_encoder: str | None = None    # a finished encoder run (e.g. contrastive) to start from
    ema_decay: float = 0.0             # > 0 scores and saves an exponential moving average of the weights
    head_dropout: float = 0.0          # dropout on the pooled features before the classifier head
    pos_weight_power: float = 0.0      # > 0 weighs each label's positives by (negatives / positives) ** power
    superclass_loss_weight: float = 1.0  # weight of each of the 5 superclass outputs' loss against a statement's
    mixup_alpha: float = 0.0           # > 0 trains on mixup: pairs of crops and their labels blended by Beta(a, a)
    valid_every: int = 1               # score fold 9 every N epochs and after the last (each costs ~half an epoch)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"               # "auto" uses a CUDA GPU when PyTorch sees one
    mixed_precision: str = "no"        # "bf16": autocast the forward passes (on GPUs that support it)

    def __post_init__(self) -> None:  # a recipe's mistakes surface when it is read, not after the data load
        check_normalize(self.normalize)
        crops = self.crop_s if isinstance(self.crop_s, list) else [self.crop_s]
        if not crops or any(not isinstance(c, (int, float)) or c <= 0 for c in crops):
            raise ValueError(f"crop_s must be a positive number of seconds or a list of them, got {self.crop_s!r}")
        for key in ("pos_weight_power", "mixup_alpha"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.superclass_loss_weight <= 0:
            raise ValueError(f"superclass_loss_weight must be > 0, got {self.superclass_loss_weight}")
        if not isinstance(self.valid_every, int) or self.valid_every < 1:
            raise ValueError(f"valid_every must be a whole number of epochs >= 1, got {self.valid_every!r}")


class EncoderClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)  # no weights: the saved head stays a plain linear layer
        self.head = nn.Linear(encoder.dim, n_outputs)

    def forward(self, x: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.encoder.pool(self.encoder(x, lead_mask))))


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / (x.std(-1, keepdims=True) + 1e-6)


def _read_excluded(path: str | None) -> set[int]:
    from ecgllm.datasets.ecgqa import read_ecg_id_list

    return read_ecg_id_list(path) if path else set()


@torch.no_grad()
def score_records(model: EncoderClassifier, signals: np.ndarray, crop: int | list[int], stride: int,
                  batch: int = 256, reduce: str = "mean", masks: np.ndarray | None = None) -> np.ndarray:
    """Sigmoid scores over sliding windows of each record ([N, leads, T]; ``masks`` [N, leads], False where a
    lead is missing, all present when None), on the model's device, reduced by their mean (or ``reduce="max"``).
    With several crop lengths, each length's result counts equally."""
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    model.eval()
    device = next(model.parameters()).device
    per_length = []
    for length in ([crop] if isinstance(crop, int) else crop):
        starts = list(range(0, signals.shape[-1] - length + 1, stride))
        out = []
        for i in range(0, len(signals), batch):
            chunk = torch.from_numpy(signals[i:i + batch]).to(device)
            windows = torch.stack([chunk[..., s:s + length] for s in starts], 1)  # [B, W, L, length]
            b, w = windows.shape[:2]
            lead_mask = (None if masks is None else
                         torch.from_numpy(masks[i:i + batch]).to(device).repeat_interleave(w, 0))  # each window's
            probs = torch.sigmoid(model(windows.reshape(b * w, *windows.shape[2:]), lead_mask)).reshape(b, w, -1)
            probs = probs.amax(1) if reduce == "max" else probs.mean(1)
            out.append(probs.float().cpu().numpy())
        per_length.append(np.concatenate(out))
    return np.mean(per_length, axis=0)


def macro_auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))  # AUC needs both classes present
    return float(roc_auc_score(y[:, keep], scores[:, keep], average="macro"))


def group_aucs(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(superclass, 71-statement) macro AUC: outputs 71-75 are the 5 superclasses, 0-70 the statements."""
    return macro_auc(y[:, 71:], scores[:, 71:]), macro_auc(y[:, :71], scores[:, :71])


def macro_auc_ci95(y: np.ndarray, scores: np.ndarray, resamples: int = 200) -> list[float]:
    """95 % bootstrap interval of ``macro_auc`` over records. Which records make up fold 10 is itself a sample:
    two runs closer than this interval's width are not told apart by it."""
    from ecgllm.evaluation.stats import bootstrap_metric_ci

    return [round(v, 4) for v in bootstrap_metric_ci(macro_auc, y, scores, n_boot=resamples)]


def fold10_summary(y: np.ndarray, scores: np.ndarray) -> dict:
    """Fold-10 macro AUCs of the 5 superclasses (outputs 71-75) and the 71 statements, with 95 % intervals."""
    labelled = y[:, 71:].sum(1) > 0
    super_auc, all71_auc = group_aucs(y, scores)
    return {"super_macro_auc": round(super_auc, 4), "all71_macro_auc": round(all71_auc, 4),
            # the PTB-XL benchmark papers score superclasses only on records that have one (40 of fold 10 don't)
            "super_macro_auc_labelled_records": round(macro_auc(y[labelled, 71:], scores[labelled, 71:]), 4),
            "super_macro_auc_ci95": macro_auc_ci95(y[:, 71:], scores[:, 71:]),
            "all71_macro_auc_ci95": macro_auc_ci95(y[:, :71], scores[:, :71])}


@dataclass
class PTBXLArrays:
    """Signals and labels of a prepared PTB-XL cache with the standard split (folds 1-8 / 9 / 10)."""

    ids: np.ndarray
    signals: np.ndarray              # [N, leads, T] float32, normalised as configured
    masks: np.ndarray                # [N, leads] bool: False where the cache masked a lead (missing, flat,
                                     # saturated), as answering masks it; all True for a cache without masks
    y: np.ndarray                    # [N, 71 + 5] multi-hot: the 71 statements, then the superclasses
    classes71: list[str]
    superclasses: list[str]
    train: np.ndarray                # row indices
    valid: np.ndarray
    test: np.ndarray
    excluded: int
    fs: float
    excluded_by_policy: int = 0      # records of ECG-QA valid/test patients in folds 1-8 (split policy)
    prep: dict | None = None         # the cache's preparation (filtering, leads, window) before `normalize`


def load_ptbxl_arrays(ecg_cache: str, ptbxl_dir: str, normalize: str, exclude_ids_file: str | None = None,
                      stage: str = "encoder_pretraining") -> tuple[PTBXLArrays, "PTBXL"]:
    from ecgllm.datasets.cache import ECGCache
    from ecgllm.datasets.ptbxl import PTBXL

    cache = ECGCache.open(ecg_cache)
    ptbxl = PTBXL.load(ptbxl_dir)
    ids = cache.index["ecg_id"].to_numpy()
    _, classes71, y71 = ptbxl.label_matrix("all", ids)
    _, supers, ysup = ptbxl.label_matrix("superclass", ids)
    folds = ptbxl.table.loc[ids, "strat_fold"].to_numpy()
    excluded = _read_excluded(exclude_ids_file)
    policy = load_policy()
    held_out = np.isin(ids, list(policy.fit_forbidden)) & (folds <= 8)
    check_normalize(normalize)
    raw = cache.load_all()
    # z-scoring removes absolute voltage (voltage criteria of hypertrophy, low QRS voltage); "mv" keeps it.
    if normalize == "zscore":
        signals = _zscore(raw)
    else:
        signals = raw - raw.mean(-1, keepdims=True)  # remove each lead's offset, keep its voltage
    # A cache built before lead masks were kept reads as every lead present, as it was trained then.
    masks = cache.masks.astype(bool) if cache.masks is not None else np.ones(raw.shape[:2], dtype=bool)
    arrays = PTBXLArrays(ids=ids, signals=signals.astype(np.float32), masks=masks,
                         y=np.concatenate([y71, ysup], 1).astype(np.float32), classes71=list(classes71),
                         superclasses=list(supers),
                         train=np.flatnonzero((folds <= 8) & ~np.isin(ids, list(excluded)) & ~held_out),
                         valid=np.flatnonzero(folds == 9), test=np.flatnonzero(folds == 10),
                         excluded=len(excluded), fs=float(cache.meta["fs"]), excluded_by_policy=int(held_out.sum()),
                         prep=cache.meta.get("prep"))
    policy.refuse(ids[arrays.train], source=str(ecg_cache), stage=stage)  # a guard: the filter above
    if arrays.excluded_by_policy:
        print(f"split policy {policy.sha256[:12]}: {arrays.excluded_by_policy} records of ECG-QA valid/test patients "
              f"in folds 1-8 of {ecg_cache} are left out of training", file=sys.stderr)
    return arrays, ptbxl


def positive_weights(y: np.ndarray, power: float) -> np.ndarray:
    """(negatives / positives) ** power per label. Statements with a few dozen training positives (STE_, TAB_)
    otherwise hardly move the shared features, and macro AUC counts them as much as NORM."""
    positives = y.sum(0).clip(min=1)
    return ((len(y) - positives) / positives) ** power


def superclass_weights(n_outputs: int, weight: float, device: torch.device) -> torch.Tensor | None:
    """Per-output loss weights: the last 5 outputs (superclasses) weigh ``weight``, the 71 statements 1. With
    equal weights the superclasses are 5 of 76 terms of the loss the shared features learn from."""
    if weight == 1.0:
        return None
    weights = torch.ones(n_outputs, device=device)
    weights[-5:] = weight
    return weights


def mixup(x: torch.Tensor, lead_mask: torch.Tensor, target: torch.Tensor, alpha: float,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend each crop and its labels with another crop of the batch by one Beta(alpha, alpha) share. A lead of
    the blend is present where either crop has it; a missing lead adds nothing (its samples count as zero)."""
    share = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(len(x)))
    x = x * lead_mask.unsqueeze(-1).to(x.dtype)
    return (share * x + (1 - share) * x[partner], lead_mask | lead_mask[partner],
            share * target + (1 - share) * target[partner])


def random_crops(signals: np.ndarray, rows: np.ndarray, offsets: np.ndarray, crop: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([signals[r, :, o:o + crop] for r, o in zip(rows, offsets)]))


def load_encoder_weights(encoder: nn.Module, folder: str) -> None:
    """Initialise ``encoder`` from another run's encoder (e.g. contrastive pretraining), read as every stage reads
    one (`ecgllm.models.encoder_source`)."""
    from ecgllm.errors import RecipeError
    from ecgllm.models.encoder_source import encoder_state

    try:
        state = encoder_state(folder)
    except FileNotFoundError:
        raise RecipeError(f"init_encoder: {folder} holds no encoder. Point it at a finished encoder run (for "
                          "recipes/encoder_ptbxl.yaml: run `ecgllm train recipes/encoder_contrastive.yaml` first), "
                          "or remove init_encoder to start from random weights.") from None
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:  # shapes differ: the run used other encoder_kwargs
        raise RecipeError(f"init_encoder: {folder} does not fit encoder_kwargs {encoder_kwargs_hint(folder)}: "
                          f"{str(exc).splitlines()[0]}") from None


def encoder_kwargs_hint(folder: str) -> str:
    config = Path(folder) / "encoder_config.json"
    return f"(that run used {json.loads(config.read_text())['encoder_kwargs']})" if config.exists() else ""


def save_encoder(out: Path, encoder: nn.Module, name: str, kwargs: dict, normalize: str, fs: float,
                 prep: dict | None = None) -> dict:
    """Encoder weights plus what a later stage needs to feed it the same input: ``prep``, the preparation of the
    cache it trained on (filtering, leads, window), is recorded with the encoder's normalisation, so a language-model
    stage that starts from the encoder checks its own preparation against all of it."""
    from safetensors.torch import save_file

    from ecgllm.models.encoder_source import ENCODER_TO_PREP_NORMALIZE

    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, out / "encoder.safetensors")
    meta = {"encoder": name, "encoder_kwargs": kwargs, "input": {"normalize": normalize, "fs": fs}}
    if prep is not None:
        meta["prep"] = {**prep, "normalize": ENCODER_TO_PREP_NORMALIZE[normalize], "fs": fs}
    (out / "encoder_config.json").write_text(json.dumps(meta, indent=2))
    return meta


def write_encoder_card(out: Path, config, meta: dict, encoder: nn.Module, labels: dict | None, metrics: dict) -> None:
    """The encoder run's `card.json` (after its training records): preparation, label space, pooling, provenance
    and headline metrics."""
    from ecgllm.models.card import cache_files, write_artifact_card

    write_artifact_card(out, "signal_encoder", meta.get("prep") or meta["input"], labels,
                        getattr(encoder, "pool_mode", "mean"), resolved(config),
                        cache_files(config.ecg_cache, config.ptbxl), metrics)


def start_run(output_dir: str, seed: int, threads: int | None) -> Path:
    """Threads, seeds and the output folder of an epoch-based encoder run."""
    from accelerate.utils import set_seed

    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


class ClassifierTask(Task):
    """Multi-label classification of random crops: the encoder pretraining's `Task`."""

    label = "encoder"

    def __init__(self, config: EncoderPretrainConfig, data: PTBXLArrays, crops: list[int], stride: int,
                 loss_fn: nn.Module) -> None:
        self.config, self.data, self.crops, self.stride, self.loss_fn = config, data, crops, stride, loss_fn
        self.batches_per_epoch = int(np.ceil(len(data.train) / config.batch_size))

    def epoch_batches(self, epoch: int):
        config, signals, train = self.config, self.data.signals, self.data.train
        rng = np.random.default_rng([config.seed, epoch])  # per epoch, so a resumed run sees the same data
        order = train[rng.permutation(len(train))]
        if len(self.crops) == 1:  # the single-length draw of earlier recipes, kept so their runs replay exactly
            lengths = np.full(self.batches_per_epoch, self.crops[0])
            offsets = rng.integers(0, signals.shape[-1] - self.crops[0] + 1, size=len(order))
        else:  # one length per batch; offsets uniform over each record's room for that length
            lengths = rng.choice(self.crops, size=self.batches_per_epoch)
            room = signals.shape[-1] - np.repeat(lengths, config.batch_size)[: len(order)] + 1
            offsets = (rng.random(len(order)) * room).astype(int)
        mix_rng = np.random.default_rng([config.seed, epoch, 1])  # own stream: recipes without mixup replay exactly
        for b in range(self.batches_per_epoch):
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            offs = offsets[b * config.batch_size:(b + 1) * config.batch_size]
            x, target = random_crops(signals, rows, offs, int(lengths[b])), torch.from_numpy(self.data.y[rows])
            lead_mask = torch.from_numpy(self.data.masks[rows])
            if config.mixup_alpha:
                x, lead_mask, target = mixup(x, lead_mask, target, config.mixup_alpha, mix_rng)
            yield x, lead_mask, target

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, lead_mask, target = batch
        return self.loss_fn(model(x, lead_mask).float(), target)

    def metrics(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if epoch % self.config.valid_every and epoch != self.config.epochs:
            return {}
        valid = self.data.valid
        super_auc, all71_auc = group_aucs(self.data.y[valid], score_records(
            model, self.data.signals[valid], self.crops, self.stride, masks=self.data.masks[valid]))
        return {"valid_super_auc": round(super_auc, 4), "valid_all71_auc": round(all71_auc, 4)}


def pretrain_encoder(config: EncoderPretrainConfig, progress: bool = True, resume_anyway: bool = False) -> dict:
    from ecgllm.training.engine import Schedule, prepare_run, run_training, stage_accelerator

    accelerator = stage_accelerator(config.device, config.mixed_precision)
    out = start_run(config.output_dir, config.seed, config.threads)
    encoder = build_encoder(config.encoder, **config.encoder_kwargs)
    if config.init_encoder:  # before the data load, so a wrong path is reported at once
        load_encoder_weights(encoder, config.init_encoder)
    data, ptbxl = load_ptbxl_arrays(config.ecg_cache, config.ptbxl, config.normalize, config.exclude_ids_file)
    signals, y, train = data.signals, data.y, data.train
    crops = crop_samples(config.crop_s, data.fs)
    stride = int(config.eval_stride_s * data.fs)
    if max(crops) > signals.shape[-1] or min(crops) < 1:
        raise ValueError(f"crop_s {config.crop_s}: every crop must fit the {signals.shape[-1] / data.fs:g} s records")

    device = accelerator.device
    pos_weight = (torch.from_numpy(positive_weights(y[train], config.pos_weight_power)).float().to(device)
                  if config.pos_weight_power else None)
    loss_fn = nn.BCEWithLogitsLoss(weight=superclass_weights(y.shape[1], config.superclass_loss_weight, device),
                                   pos_weight=pos_weight)
    task = ClassifierTask(config, data, crops, stride, loss_fn)
    model = EncoderClassifier(encoder, y.shape[1], config.head_dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr,
                                                    total_steps=config.epochs * task.batches_per_epoch)
    # An exponential moving average of the weights scores more smoothly than the last step's weights.
    run = prepare_run(accelerator, model, optimizer, scheduler, out, config.seed, ema_decay=config.ema_decay)
    history = run_training(run, task, Schedule(epochs=config.epochs), config, progress, resume_anyway)
    if run.is_main:
        with run.scored() as final:
            _finish(config, final, encoder, data, ptbxl, crops, stride, history, out)
    accelerator.wait_for_everyone()
    return json.loads((out / "result.json").read_text())


def _finish(config: EncoderPretrainConfig, final: EncoderClassifier, encoder: nn.Module, data: PTBXLArrays, ptbxl,
            crops: list[int], stride: int, history: list[dict], out: Path) -> None:
    """Fold-10 scores, the encoder, its head and labels, and the records it trained on (the main process)."""
    from safetensors.torch import save_file

    from ecgllm.datasets.ecgqa_attributes import statement_names

    test = data.test
    result = {"encoder": config.encoder, "encoder_kwargs": config.encoder_kwargs,
              "params": sum(p.numel() for p in encoder.parameters()),
              **fold10_summary(data.y[test], score_records(final, data.signals[test], crops, stride,
                                                           masks=data.masks[test])),
              "epoch_s": round(float(np.median([h["epoch_s"] for h in history])), 1), "epochs": config.epochs,
              "train_records": int(len(data.train)), "excluded_records": data.excluded,
              "excluded_by_split_policy": data.excluded_by_policy, "history": history,
              "config": asdict(config)}
    final = final.cpu()  # saved weights load anywhere
    meta = save_encoder(out, final.encoder, config.encoder, config.encoder_kwargs, config.normalize, data.fs,
                        data.prep)
    # The classifier head and its label vocabulary serve the classifier baselines and the text-tags pipeline.
    save_file({k: v.contiguous() for k, v in final.head.state_dict().items()}, out / "head.safetensors")
    names = statement_names(ptbxl.statements)  # read by the language model's label tokens
    labels = {"all71": data.classes71, "superclass": data.superclasses,
              "names": {c: names.get(c, c) for c in data.classes71 + data.superclasses}}
    (out / "labels.json").write_text(json.dumps(labels) + "\n")
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    write_training_records(out, "encoder_pretraining", data.ids[data.train], inherited=[config.init_encoder])
    write_encoder_card(out, config, meta, final.encoder, labels,
                       {k: v for k, v in result.items() if k.startswith(("super_macro_auc", "all71_macro_auc"))})
