"""Image-encoder distillation: renders of PTB-XL records → the frozen signal encoder's tokens of the same records.

The teacher is a finished encoder pretraining run or a model folder (its signal encoder, pooled to the language
model's tokens per ECG, and its classifier head: a model folder's label-token head). The student
(`ecgllm.models.image_encoder`) sees a render of the record — layout, paper and distortions drawn at random with
the record's seed — and learns to reproduce the teacher's tokens (mean squared error, scaled by their variance) and
the head's label probabilities computed from them (binary cross-entropy against the teacher's probabilities), so
the label tokens come out right too; with ``truth_weight``, also the record's own PTB-XL labels (binary
cross-entropy), since the teacher's probabilities alone cap the student at the teacher.

Split discipline as for the signal encoder: training renders come from PTB-XL folds 1-8 minus the forbidden records
of the split policy (every record of an ECG-QA valid or test patient); fold 10 is rendered clean and distorted to
report superclass macro AUC against the teacher reading the signals of the same records.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecgllm.errors import RecipeError
from ecgllm.models.image_encoder import ImageEncoder, ImageEncoderConfig, image_input
from ecgllm.training.engine import Task
from ecgllm.training.recipes import resolved


@dataclass
class ImageDistillConfig:
    output_dir: str
    teacher: str                        # an encoder pretraining run, or the checkpoint the encoder will serve
    ecg_cache: str                      # 100 Hz cache from `ecgllm data prepare`
    ptbxl: str
    exclude_ids_file: str | None = None
    n_tokens: int = 4                   # the language model's tokens per ECG (its encoder_kwargs.n_tokens)
    image: dict = field(default_factory=dict)   # ImageEncoderConfig fields (size, widths, heads)
    n_train: int = 6000                 # records rendered for training (one render each)
    augment_probability: float = 0.7    # share of training renders with print/photo distortions
    n_eval: int = 600                   # fold-10 records rendered for the report
    epochs: int = 4
    batch_size: int = 32
    lr: float = 2e-3
    label_weight: float = 1.0
    truth_weight: float = 0.0           # binary cross-entropy against the record's own PTB-XL labels as well (the
                                        # teacher's probabilities alone cap the student at the teacher's AUC)
    seed: int = 0
    threads: int | None = None
    workers: int = 2                    # processes that render
    device: str = "auto"                # "auto" uses a CUDA GPU when PyTorch sees one
    mixed_precision: str = "no"         # "bf16": autocast the student's forward passes
    init_student: str | None = None     # a folder with an image encoder (a distillation run or a model): start from it
    shift_pixels: int = 0               # each training page moved by up to this many pixels, up/down and left/right,
                                        # drawn anew every epoch (the encoder's reading moved with a page moved by a
                                        # few pixels)


def load_teacher(run: Path, n_tokens: int):
    """The signal encoder and classifier head to imitate: from an encoder pretraining run, or from a language
    model checkpoint (its own copy of the encoder, as the LLM was trained with it, and its label-token head)."""
    from ecgllm.models.encoder_source import encoder_head, encoder_meta, encoder_state
    from ecgllm.models.encoders import build_encoder

    try:
        saved, head_weights = encoder_meta(run), encoder_head(run)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"teacher: {exc}") from None
    if head_weights is None:
        raise FileNotFoundError(f"teacher: {run} has no classifier head (head.safetensors or label tokens)")
    kwargs = dict(saved["encoder_kwargs"], n_tokens=n_tokens)
    encoder = build_encoder(saved["encoder"], **kwargs)
    encoder.load_state_dict(encoder_state(run))
    head = nn.Linear(head_weights["weight"].shape[1], head_weights["weight"].shape[0])
    head.load_state_dict(head_weights)
    return encoder.eval().requires_grad_(False), head.eval().requires_grad_(False), saved


@torch.no_grad()
def teacher_targets(encoder, head, signals: np.ndarray, masks: np.ndarray,
                    batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's tokens and head logits of ``signals`` [N, leads, T] with their lead ``masks`` [N, leads]."""
    tokens, logits = [], []
    device = next(encoder.parameters()).device
    for i in range(0, len(signals), batch):
        rows = slice(i, i + batch)
        t = encoder(torch.from_numpy(signals[rows]).to(device), torch.from_numpy(masks[rows]).to(device))
        tokens.append(t.cpu().numpy())
        logits.append(head(encoder.pool(t)).cpu().numpy())
    return np.concatenate(tokens), np.concatenate(logits)


RENDERS_VERSION = 2  # in the cached renders' names: a run folder from before the layout fix draws them again


def _render_one(task: tuple) -> np.ndarray:
    from ecgllm.io.leads import STANDARD_12
    from ecgllm.io.record import ECG
    from ecgllm.render.pages import training_page

    signal, fs, seed, augment, height, width = task
    page = training_page(seed, augment).draw(ECG(signal, fs, list(STANDARD_12))).image
    return (image_input(page, height, width)[0] * 255).round().astype(np.uint8)


def render_set(signals: np.ndarray, fs: float, seeds: np.ndarray, augment: np.ndarray, config: ImageEncoderConfig,
               workers: int, progress: bool, label: str) -> np.ndarray:
    """One render per record (layout and distortions from its seed) → uint8 [N, H, W] image inputs."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    tasks = [(signals[i], fs, int(seeds[i]), bool(augment[i]), config.height, config.width) for i in range(len(signals))]
    out = np.empty((len(tasks), config.height, config.width), dtype=np.uint8)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, image in enumerate(tqdm(pool.map(_render_one, tasks, chunksize=16), total=len(tasks),
                                       desc=f"render {label}", disable=not progress)):
            out[i] = image
    return out


def _load_or_render(path: Path, make) -> np.ndarray:
    """Renders are cached next to the run, so a resumed run does not draw them again."""
    if path.exists():
        return np.load(path, mmap_mode="r")
    images = make()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, images)
    tmp.replace(path)
    return images


def render_pixels(images: np.ndarray) -> torch.Tensor:
    """Renders (uint8 pages [N, H, W], as `render_set` makes them) as the image encoder's input [N, 1, H, W]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]


def shifted(pixels: torch.Tensor, rng: np.random.Generator, most: int) -> torch.Tensor:
    """Each page of ``pixels`` [N, 1, H, W] moved by its own whole-pixel offset in [-most, most] on each axis; what
    leaves one edge comes back at the other (a page's margins are blank paper, 0 in the encoder's input)."""
    offsets = rng.integers(-most, most + 1, size=(len(pixels), 2))
    return torch.stack([torch.roll(page, (int(dy), int(dx)), dims=(-2, -1)) for page, (dy, dx) in zip(pixels, offsets)])


@torch.no_grad()
def student_tokens(student: ImageEncoder, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The student's tokens [N, n_tokens, dim] of renders (uint8 pages, as `render_set` makes them)."""
    student.eval()
    device = next(student.parameters()).device
    return np.concatenate([student(render_pixels(images[i: i + batch]).to(device)).cpu().numpy()
                           for i in range(0, len(images), batch)])


@torch.no_grad()
def student_outputs(student: ImageEncoder, head: nn.Module, images: np.ndarray, pool,
                    batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and label logits of renders; ``pool`` is the signal encoder's own pooling, the one the served
    model's label tokens apply to the image encoder's tokens."""
    tokens = student_tokens(student, images, batch)
    device = next(student.parameters()).device
    logits = [head(pool(torch.from_numpy(tokens[i: i + batch]).to(device))).cpu().numpy()
              for i in range(0, len(tokens), batch)]
    return tokens, np.concatenate(logits)


class DistillTask(Task):
    """Renders against the teacher's tokens and label probabilities: the image distillation's `Task`."""

    label = "image distillation"

    def __init__(self, config: ImageDistillConfig, images: np.ndarray, target_tokens: np.ndarray,
                 target_logits: np.ndarray, encoder: nn.Module, head: nn.Module, labels: np.ndarray) -> None:
        self.config, self.images, self.target_tokens, self.target_logits = config, images, target_tokens, target_logits
        self.labels = labels.astype(np.float32)
        self.encoder, self.head = encoder, head
        self.scale = float(target_tokens.var()) + 1e-8
        self.batches_per_epoch = int(np.ceil(len(images) / config.batch_size))

    def epoch_batches(self, epoch: int):
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.images))
        size = self.config.batch_size
        for step in range(self.batches_per_epoch):
            rows = np.sort(order[step * size: (step + 1) * size])  # sorted: the cached renders are read from disk
            pixels = render_pixels(self.images[rows])
            if self.config.shift_pixels:
                offsets = np.random.default_rng([self.config.seed, epoch, step])
                pixels = shifted(pixels, offsets, self.config.shift_pixels)
            yield (pixels,
                   torch.from_numpy(self.target_tokens[rows]), torch.from_numpy(self.target_logits[rows]),
                   torch.from_numpy(self.labels[rows]))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        images, target_tokens, target_logits, labels = batch
        tokens = model(images).float()
        token_loss = nn.functional.mse_loss(tokens, target_tokens) / self.scale
        logits = self.head(self.encoder.pool(tokens))
        label_loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.sigmoid(target_logits))
        loss = token_loss + self.config.label_weight * label_loss
        if self.config.truth_weight:
            loss = loss + self.config.truth_weight * nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return loss


def distill_image_encoder(config: ImageDistillConfig, progress: bool = True, resume_anyway: bool = False) -> dict:
    from ecgllm.training.engine import Schedule, prepare_run, run_training, stage_accelerator
    from ecgllm.training.pretrain_encoder import load_ptbxl_arrays, start_run

    accelerator = stage_accelerator(config.device, config.mixed_precision)
    out = start_run(config.output_dir, config.seed, config.threads)
    encoder, head, saved = load_teacher(Path(config.teacher), config.n_tokens)
    encoder, head = encoder.to(accelerator.device), head.to(accelerator.device)
    image_config = ImageEncoderConfig(**{"n_tokens": config.n_tokens, "dim": encoder.dim, **config.image})
    data, _ = load_ptbxl_arrays(config.ecg_cache, config.ptbxl, saved["input"]["normalize"], config.exclude_ids_file,
                                stage="image_distillation")
    rng = np.random.default_rng(config.seed)
    train = rng.permutation(data.train)[: config.n_train]
    test = rng.permutation(data.test)[: config.n_eval]
    seeds = rng.integers(0, 2**31 - 1, size=len(train))
    augment = rng.random(len(train)) < config.augment_probability
    test_seeds = np.arange(len(test)) + 10_000_019
    with accelerator.main_process_first():  # the main process renders and caches; the others read its files
        train_images = _load_or_render(out / f"renders_train_v{RENDERS_VERSION}.npy", lambda: render_set(
            data.signals[train], data.fs, seeds, augment, image_config, config.workers, progress, "train"))
        clean = _load_or_render(out / f"renders_test_clean_v{RENDERS_VERSION}.npy", lambda: render_set(
            data.signals[test], data.fs, test_seeds, np.zeros(len(test), bool), image_config, config.workers,
            progress, "fold 10 clean"))
        distorted = _load_or_render(out / f"renders_test_augmented_v{RENDERS_VERSION}.npy", lambda: render_set(
            data.signals[test], data.fs, test_seeds, np.ones(len(test), bool), image_config, config.workers,
            progress, "fold 10 distorted"))
    target_tokens, target_logits = teacher_targets(encoder, head, data.signals[train], data.masks[train])
    task = DistillTask(config, train_images, target_tokens, target_logits, encoder, head, data.y[train])

    student = ImageEncoder(image_config)
    lineage = load_student_init(student, Path(config.init_student)) if config.init_student else []
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr,
                                                    total_steps=config.epochs * task.batches_per_epoch, pct_start=0.1)
    run = prepare_run(accelerator, student, optimizer, scheduler, out, config.seed, max_grad_norm=1.0)
    history = run_training(run, task, Schedule(epochs=config.epochs), config, progress, resume_anyway)
    if run.is_main:
        with run.scored() as student:
            _finish(config, student, encoder, head, data, train, test, train_images, clean, distorted, image_config,
                    history, out, progress, lineage)
    accelerator.wait_for_everyone()
    return json.loads((out / "result.json").read_text())


def _finish(config: ImageDistillConfig, student: ImageEncoder, encoder: nn.Module, head: nn.Module, data,
            train: np.ndarray, test: np.ndarray, train_images: np.ndarray, clean: np.ndarray, distorted: np.ndarray,
            image_config: ImageEncoderConfig, history: list[dict], out: Path, progress: bool,
            lineage: list[dict]) -> None:
    """Fold-10 scores of the renders and of the signals, the image encoder, its page check and the records it
    trained on (the main process)."""
    from ecgllm.datasets.split_policy import write_training_records

    y = data.y[test]
    _, teacher_logits = teacher_targets(encoder, head, data.signals[test], data.masks[test])
    result = {"teacher": config.teacher, "n_train": int(len(train)), "n_eval": int(len(test)),
              "excluded_by_split_policy": data.excluded_by_policy,
              "params": sum(p.numel() for p in student.parameters()), "history": history}
    outputs = [("signal", teacher_logits)] + [(f"image_{name}", student_outputs(student, head, images, encoder.pool)[1])
                                              for name, images in (("clean", clean), ("augmented", distorted))]
    for name, logits in outputs:
        result.update(superclass_metrics(name, y, logits))
    save_image_encoder(out, student.cpu(), {"teacher": config.teacher, "distillation": asdict(config),
                                            "continued_from": lineage})
    write_training_records(out, "image_distillation", data.ids[train], inherited=[config.teacher, config.init_student])
    held_out = page_check_pages(data, image_config, workers=config.workers, progress=progress)
    if held_out is None:
        print("no PTB-XL fold 9 record of an ECG-QA train patient in the cache: no page check fitted (pictures "
              "will be answered without one)", file=sys.stderr)
    else:
        check = fit_page_check(out, student, train_images, held_out)
        result["page_check"] = {"typical": round(check.typical, 2), "refuse": round(check.refuse, 2)}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    write_image_card(out, config, image_config, encoder, result)


def write_image_card(out: Path, config: ImageDistillConfig, image_config: ImageEncoderConfig, teacher: nn.Module,
                     result: dict) -> None:
    """The run's `card.json`: the page size it reads, the teacher's label space and pooling (which its tokens feed),
    provenance and the fold-10 metrics."""
    from ecgllm.models.card import cache_files, write_artifact_card

    from ecgllm.models.encoder_source import encoder_labels

    labels = encoder_labels(config.teacher)
    write_artifact_card(out, "image_encoder", {"height": image_config.height, "width": image_config.width}, labels,
                        getattr(teacher, "pool_mode", "mean"), resolved(config),
                        cache_files(config.ecg_cache, config.ptbxl),
                        {k: v for k, v in result.items() if k.startswith(("image_", "signal_"))})


def page_check_pages(data, config: ImageEncoderConfig, n: int = 300, workers: int = 1,
                     progress: bool = False) -> np.ndarray | None:
    """Renders that set the page check's thresholds: PTB-XL fold 9 records of ECG-QA *train* patients (the image
    encoder trains on folds 1-8, and no ECG-QA valid or test record is used), each drawn once clean and once
    distorted, seeded."""
    from ecgllm.datasets.split_policy import load_policy

    fold9 = data.valid[~np.isin(data.ids[data.valid], list(load_policy().fit_forbidden))]
    rows = np.sort(np.random.default_rng(0).permutation(fold9)[:n])
    if len(rows) == 0:
        return None
    seeds = np.arange(len(rows)) + 30_000_001
    return np.concatenate([render_set(data.signals[rows], data.fs, seeds, np.full(len(rows), augment), config,
                                      workers, progress, f"page check, fold 9 {name}")
                           for name, augment in (("clean", False), ("distorted", True))])


def fit_page_check(run: Path, student: ImageEncoder, train_images: np.ndarray, held_out_images: np.ndarray,
                   n_train: int = 2000, seed: int = 0, save: bool = True):
    """Fit the run's page check (`ecgllm.models.page_check`), and save it unless ``save`` is False: the reference
    from ``n_train`` of its training renders, the thresholds from ``held_out_images`` (`page_check_pages`), which it
    never trained on."""
    from ecgllm.models.page_check import TEXTURE_LAYERS, PageCheck, page_readings

    student = student.cpu().eval()
    rows = np.sort(np.random.default_rng(seed).choice(len(train_images), min(n_train, len(train_images)),
                                                     replace=False))

    @torch.no_grad()
    def readings(images, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Token features and texture descriptors of renders (uint8 pages, as `render_set` makes them)."""
        read = [page_readings(student, render_pixels(images[i: i + batch]), TEXTURE_LAYERS)
                for i in range(0, len(images), batch)]
        return np.concatenate([f for f, _ in read]), np.concatenate([t for _, t in read])

    train, train_texture = readings(train_images[rows])
    held_out, held_out_texture = readings(held_out_images)
    check = PageCheck.fit(train, held_out, train_texture, held_out_texture, view_shift=student.config.view_shift)
    if save:
        check.save(run)
    return check


def fit_page_check_of_run(run: Path, teacher: Path | None, ecg_cache: str, ptbxl: str, workers: int = 2,
                          view_shift: int | None = None):
    """`fit_page_check` for a finished distillation run folder (its weights, its cached training renders); the
    teacher (by default the one the run recorded) gives the signals' normalisation, as in the distillation. A
    ``view_shift`` other than the run's is the one the check is fitted for (`ImageEncoderConfig.view_shift`: the check
    reads the tokens the encoder will serve), written into the run's image encoder once the check is."""
    from ecgllm.models.image_encoder import load_image_encoder
    from ecgllm.models.page_check import PAGE_CHECK_FILE
    from ecgllm.training.pretrain_encoder import load_ptbxl_arrays

    run = Path(run)
    if (run / "config.json").exists():
        raise RecipeError(f"{run} is a model folder; name the distillation run whose training renders it keeps")
    student, described = load_image_encoder(run)
    config = student.config
    changed = view_shift is not None and view_shift != config.view_shift
    if changed:
        config.view_shift = view_shift
    _, _, saved = load_teacher(Path(teacher or described["teacher"]), config.n_tokens)
    data, _ = load_ptbxl_arrays(ecg_cache, ptbxl, saved["input"]["normalize"], stage="page_check")
    train_images = np.load(run / f"renders_train_v{RENDERS_VERSION}.npy", mmap_mode="r")
    held_out = page_check_pages(data, config, workers=workers, progress=True)
    if held_out is None:
        raise RecipeError(f"{ecg_cache} holds no PTB-XL fold 9 record of an ECG-QA train patient to set the "
                          "page check's thresholds on")
    check = fit_page_check(run, student, train_images, held_out, save=False)
    if changed:  # written once the check for that reading is fitted: a failed fit leaves the run as it was
        # the old check goes first: a run cut off before the new one is saved has none, never a mismatched one
        (run / PAGE_CHECK_FILE).unlink(missing_ok=True)
        save_image_encoder(run, student, {k: v for k, v in described.items() if k != "config"})
    check.save(run)
    return check


def load_student_init(student: ImageEncoder, folder: Path) -> list[dict]:
    """Warm start: the weights of an earlier image encoder of the same shape, so a distillation can go on with
    fresh renders and a fresh schedule instead of starting again. Returns the recipes that made those weights, first
    first (the earlier encoder's own lineage, then its recipe), for the new encoder's provenance."""
    from ecgllm.models.image_encoder import load_image_encoder

    try:
        earlier, described = load_image_encoder(folder)
    except FileNotFoundError:
        raise RecipeError(f"init_student: {folder} holds no image encoder; name a finished distillation run or a "
                          f"model folder with one") from None
    saved, wanted = ImageEncoderConfig(**described["config"]).shape(), student.config.shape()
    if saved != wanted:  # the view shift is how the weights are read, not their shape: it may differ
        differ = ", ".join(f"{k}: {saved.get(k)} there, {v} here" for k, v in wanted.items() if saved.get(k) != v)
        raise RecipeError(f"init_student: the image encoder in {folder} has another shape ({differ})")
    student.load_state_dict(earlier.state_dict())
    return [*described.get("continued_from", []), *([described["distillation"]] if "distillation" in described else [])]


def superclass_metrics(name: str, y: np.ndarray, logits: np.ndarray) -> dict:
    """Macro AUC from scores (superclasses and 71 statements); macro F1 and Hamming loss of the superclasses at
    probability 0.5."""
    from sklearn.metrics import f1_score, hamming_loss

    from ecgllm.training.pretrain_encoder import macro_auc

    predicted = (logits[:, 71:] > 0).astype(int)  # sigmoid(logit) > 0.5
    return {f"{name}_super_macro_auc": round(macro_auc(y[:, 71:], logits[:, 71:]), 4),
            f"{name}_all71_macro_auc": round(macro_auc(y[:, :71], logits[:, :71]), 4),
            f"{name}_super_macro_f1": round(float(f1_score(y[:, 71:], predicted, average="macro", zero_division=0)), 4),
            f"{name}_super_hamming_loss": round(float(hamming_loss(y[:, 71:], predicted)), 4)}


def save_image_encoder(folder: Path, student: ImageEncoder, provenance: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, folder / "image_encoder.safetensors")
    (folder / "image_encoder.json").write_text(json.dumps({**provenance, "config": student.config.to_dict()},
                                                          indent=2) + "\n")
