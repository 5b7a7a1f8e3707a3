"""Refit a checkpoint's label head on what its language model reads: whole windows.

The label head (`ecgllm.models.label_tokens`) is the classifier that names the likeliest statements to the LLM and
gives the named statements their probabilities; the image encoder's tokens go through it too. It comes from the
encoder pretraining, which fitted it on pooled tokens of 2.5 s crops (16 tokens per crop, scores averaged over
sliding windows), while the language model pools the 4 tokens of a whole 10 s window. Refitting the same linear
layer on those pooled tokens, with the encoder frozen, changes nothing else in the model.

Records (`fit_rows`): fitted on PTB-XL folds 1-8 outside every ECG-QA valid/test patient (the split policy's fit
rule), stopped on fold 9 records of ECG-QA train patients; both are recorded as the stage ``label_head``. No ECG-QA
valid or test record is fitted on or used for stopping. The AUCs "after" in the report are read on the records
that chose the epoch, so they flatter the refit a little.

Outcome for the default checkpoint (`docs/results/ecgqa_candidate_label_head.md`): the refit ranks the statements
better on those fold 9 records (`benchmarks/results/label_head_fit.json`), but the language model, trained on the
old head's statements and confidences, answered ECG-QA valid questions about as well with it as without (a gain on
the official ones within chance), so it was not shipped; nor was a 1,000-step continuation that learned to read it
(`recipes/ecgqa/continue_label_head.yaml`, `docs/results/ecgqa_candidate_continue_label_head.md`). A head refitted
before the language-model stages is where it could still pay off.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

STAGE = "label_head"
HEAD_KEYS = ("label_tokens.head.weight", "label_tokens.head.bias")
AUC_KEYS = ("statements_macro_auc", "superclass_macro_auc")


def head_aucs(head: nn.Linear, features: np.ndarray, y: np.ndarray) -> dict:
    """Macro AUC of the head's scores: the 71 statements and the 5 superclasses (outputs 71-75)."""
    from ecgllm.training.pretrain_encoder import group_aucs

    with torch.no_grad():
        superclass, statements = group_aucs(y, head(torch.from_numpy(features).float()).numpy())
    return {"statements_macro_auc": round(statements, 4), "superclass_macro_auc": round(superclass, 4)}


def fit_head(head: nn.Linear, train: tuple[np.ndarray, np.ndarray], stop: tuple[np.ndarray, np.ndarray],
             epochs: int = 30, lr: float = 1e-3, weight_decay: float = 1e-3, batch_size: int = 256, seed: int = 0,
             progress: bool = True) -> tuple[nn.Linear, int, list[dict]]:
    """A copy of ``head`` fitted from its own weights with a plain BCE loss (unweighted, so the probabilities stay
    calibrated, as `label_tokens` assumes) on ``train`` (features, labels); the epoch kept is the first with the
    highest sum of the two macro AUCs on ``stop`` (epoch 0: the head as it was). Returns it, that epoch and the
    history (each epoch's mean training loss and AUCs on ``stop``)."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    fitted = nn.Linear(head.in_features, head.out_features)
    fitted.load_state_dict(head.state_dict())
    optimizer = torch.optim.AdamW(fitted.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = torch.from_numpy(train[0]).float(), torch.from_numpy(train[1]).float()
    history = [{"epoch": 0, **head_aucs(fitted, *stop)}]
    best = (sum(history[0][k] for k in AUC_KEYS), 0, {k: v.clone() for k, v in fitted.state_dict().items()})
    for epoch in tqdm(range(1, epochs + 1), desc="label head", unit="epoch", disable=not progress):
        order, losses = torch.randperm(len(x), generator=generator), []
        for i in range(0, len(x), batch_size):
            rows = order[i:i + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(fitted(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()) * len(rows))
        history.append({"epoch": epoch, "loss": round(sum(losses) / len(x), 5), **head_aucs(fitted, *stop)})
        score = sum(history[-1][k] for k in AUC_KEYS)
        if score > best[0]:
            best = (score, epoch, {k: v.clone() for k, v in fitted.state_dict().items()})
    fitted.load_state_dict(best[2])
    return fitted.requires_grad_(False), best[1], history


def fit_rows(ids: np.ndarray, train: np.ndarray, fold9: np.ndarray, policy) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, stop rows) as indices into ``ids``: ``train``, the loader's folds 1-8 rows (already outside every
    ECG-QA valid/test patient), and the rows of ``fold9`` outside them too. Raises `ForbiddenRecordsError` if
    either holds a record the policy forbids fitting on."""
    stop = np.setdiff1d(fold9, np.flatnonzero(np.isin(ids, list(policy.fit_forbidden))))
    for rows, which in ((train, "fit"), (stop, "stop")):
        policy.refuse(ids[rows], source=f"the label head's {which} records", stage=STAGE)
    return train, stop


def write_refitted_model(model: Path, out: Path, head: nn.Linear, records: np.ndarray, recipe: dict,
                         data_files: list | None = None) -> None:
    """``out``: a copy of the model folder ``model`` with ``head``'s weights as its label head, named after its
    folder, the ``records`` the fit read recorded as the stage `STAGE` after the stages ``model`` recorded, and a
    card of its own (its ``recipe`` and the hashes of its ``data_files``, no figures of the model it came from).
    Written beside ``out`` and renamed at the end, so a failure leaves no half-written folder."""
    from safetensors.torch import load_file, save_file

    from ecgllm.datasets.split_policy import TRAINING_RECORDS, write_training_records
    from ecgllm.models.card import provenance, read_card, write_card
    from ecgllm.models.model_folder import WEIGHTS_FILE

    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    weights = load_file(model / WEIGHTS_FILE)
    for key, value in zip(HEAD_KEYS, (head.weight, head.bias)):
        if key not in weights:
            raise ValueError(f"{model} has no label head ({key} missing from {WEIGHTS_FILE})")
        if weights[key].shape != value.shape or weights[key].dtype != value.dtype:
            raise ValueError(f"{model}'s {key} is {weights[key].dtype} {tuple(weights[key].shape)}; the refitted "
                             f"head's is {value.dtype} {tuple(value.shape)}")
        weights[key] = value.detach().clone().contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staged = Path(tmp) / out.name
        shutil.copytree(model, staged)
        save_file(weights, staged / WEIGHTS_FILE, metadata={"format": "pt"})
        config = json.loads((staged / "config.json").read_text())
        # the copy is a model of its own: named after its folder, as a trained run's final folder is
        config.update(name=out.name, shipped_from=None)
        (staged / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (staged / TRAINING_RECORDS).unlink(missing_ok=True)
        write_training_records(staged, STAGE, records, inherited=[model])
        card = read_card(model)
        if card is not None:  # the model's card, with this folder's provenance and none of its figures
            own = provenance(staged, recipe, data_files or [])
            write_card(staged, card.model_copy(update={"provenance": own, "metrics": {}}))
        staged.rename(out)


def refit_label_head(model: Path, signals: str, ptbxl: str, out: Path, epochs: int = 30, lr: float = 1e-3,
                     weight_decay: float = 1e-3, seed: int = 0) -> dict:
    """Write ``out``: a copy of the model folder ``model`` whose label head is refitted (`fit_head`) on whole
    windows, with the stage recorded in its training records. Returns the report (also ``out``/label_head_fit.json)."""
    from ecgllm.datasets.split_policy import inherited_stages, load_policy
    from ecgllm.models.card import cache_files
    from ecgllm.models.encoder_source import encoder_meta
    from ecgllm.models.model_folder import WEIGHTS_FILE, is_legacy, is_model_folder, read_config
    from ecgllm.training.distill_image import load_teacher, teacher_targets
    from ecgllm.training.pretrain_encoder import load_ptbxl_arrays

    if not is_model_folder(model) or is_legacy(model):
        raise ValueError(f"{model} is not a model folder of the current layout (config.json and {WEIGHTS_FILE}); "
                         f"write it anew first with scripts/ship_checkpoint.py")
    if out.exists():
        raise FileExistsError(f"{out} exists; give a new folder")
    policy = load_policy()
    inherited_stages([model], policy)  # a model trained under another policy stops here, before any fitting
    saved = encoder_meta(model)
    encoder, head, _ = load_teacher(model, saved["encoder_kwargs"]["n_tokens"])
    data, _ = load_ptbxl_arrays(signals, ptbxl, saved["input"]["normalize"], stage=STAGE)
    vocabulary = read_config(model).label_vocab or {}
    if (vocabulary.get("all71"), vocabulary.get("superclass")) != (data.classes71, data.superclasses):
        raise ValueError(f"{model}'s label vocabulary is not PTB-XL's 71 statements and 5 superclasses in the "
                         f"order of {ptbxl}")
    train, stop = fit_rows(data.ids, data.train, data.valid, policy)
    features = {}
    for name, rows in (("fit", train), ("stop", stop)):  # what the label head reads: the pooled tokens
        tokens, _ = teacher_targets(encoder, head, data.signals[rows], data.masks[rows])
        with torch.no_grad():
            features[name] = (encoder.pool(torch.from_numpy(tokens)).numpy(), data.y[rows])
    fitted, kept, history = fit_head(head, features["fit"], features["stop"], epochs, lr, weight_decay, seed=seed)
    recipe = {"stage": STAGE, "model": str(model), "signals": str(signals), "ptbxl": str(ptbxl), "epochs": epochs,
              "lr": lr, "weight_decay": weight_decay, "seed": seed}
    write_refitted_model(model, out, fitted, data.ids[np.concatenate([train, stop])], recipe,
                         cache_files(signals, ptbxl))
    report = {"model": str(model), "out": str(out), "fit_records": int(len(train)), "stop_records": int(len(stop)),
              "fit_split": "PTB-XL folds 1-8 outside every ECG-QA valid/test patient",
              "stop_split": "PTB-XL fold 9, ECG-QA train patients only (they also chose the epoch kept, so the AUCs "
                            "after are slightly optimistic)",
              **{k: v for k, v in recipe.items() if k not in ("stage", "model")}, "kept_epoch": kept,
              "before": history[0], "after": {k: history[kept][k] for k in AUC_KEYS}, "history": history}
    (out / "label_head_fit.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
