"""Fit a model folder's image quality head (`ecgllm.models.image_quality`) against its own signal-quality heads.

Renders of PTB-XL training records (folds 1-8 without any ECG-QA valid or test patient, the image encoder's own
training pool), clean or with print/photo distortions, go through the folder's image encoder; the signal-quality
heads read the same records' signals. Ridge regression (scikit-learn, its penalty chosen by efficient leave-one-out
cross-validation over the training renders) maps the page descriptors to the heads' logits. Fold-9 records of
ECG-QA valid patients (the model-selection split: nothing is fitted on them), rendered once clean and once
distorted, report how well the head's probabilities rank PTB-XL's own noise columns, beside the signal heads on the
same records.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ecgllm.errors import RecipeError
from ecgllm.models.image_quality import LAYERS, ImageQuality, page_descriptors

EPSILON = 1e-4  # the signal heads' probabilities are clipped to [EPSILON, 1 - EPSILON] before their logits are taken
PENALTIES = tuple(np.logspace(0, 4, 9))


def _descriptors(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    from ecgllm.training.distill_image import render_pixels

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            pixels = render_pixels(images[start:start + batch])
            out.append(page_descriptors(model.image_encoder.feature_maps(pixels, LAYERS)).numpy())
    return np.concatenate(out)


def _noise_of_signals(model, signals: np.ndarray, masks: np.ndarray, batch: int = 256) -> np.ndarray:
    quality = model.label_tokens.quality
    with torch.no_grad():
        return np.concatenate([quality(torch.from_numpy(signals[i:i + batch]), torch.from_numpy(masks[i:i + batch]))
                               .numpy() for i in range(0, len(signals), batch)])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p))


def fit_head(descriptors: np.ndarray, noise: np.ndarray, pair: str) -> tuple[ImageQuality, float]:
    """Ridge regression of the signal heads' logits (of probabilities ``noise`` [N, entries]) on standardised page
    ``descriptors`` [N, F]; returns the head (for the image encoder and signal heads ``pair`` names) and the
    penalty chosen."""
    from sklearn.linear_model import RidgeCV

    center, scale = descriptors.mean(0), descriptors.std(0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    ridge = RidgeCV(alphas=PENALTIES).fit((descriptors - center) / scale, _logit(noise))
    return ImageQuality(center, scale, ridge.coef_.T, ridge.intercept_, pair), float(ridge.alpha_)


def fill_missing_leads(noise: np.ndarray, n_leads: int) -> np.ndarray:
    """The signal heads give a lead the record lacks NaN; a page still draws a trace there, so its target is the
    record's own probability of that kind. ``noise`` [N, kinds x (1 + leads)], kind-major (`entry_names`)."""
    per_kind = noise.reshape(len(noise), -1, 1 + n_leads)
    return np.where(np.isnan(per_kind), per_kind[..., :1], per_kind).reshape(noise.shape)


def fit_image_quality(model, ecg_cache: str, ptbxl: str, normalize: str, n_train: int = 3000,
                      augment_probability: float = 0.7, n_held_out: int = 600, seed: int = 0, workers: int = 1,
                      progress: bool = True, trained: frozenset[int] = frozenset()) -> tuple[ImageQuality, dict]:
    """The image quality head of ``model`` (an `EcgLanguageModel` with an image encoder and signal-quality heads),
    fitted on renders of PTB-XL training records from ``ecg_cache`` (``normalize``: its encoder's, as it was
    trained), and the report: the records and penalty of the fit and, per noise kind, the held-out AUC of the head
    and of the signal heads (over records no stage of the model trained on: not in ``trained``)."""
    from ecgllm.models.image_quality import pair_fingerprint
    from ecgllm.training.distill_image import render_set
    from ecgllm.training.pretrain_encoder import load_ptbxl_arrays

    if model.image_encoder is None or model.label_tokens is None or model.label_tokens.quality is None:
        lacking = "an image encoder" if model.image_encoder is None else "signal-quality heads"
        raise RecipeError(f"an image quality head imitates the signal-quality heads from the image encoder's view; "
                          f"this model lacks {lacking}")
    quality = model.label_tokens.quality
    data, ptbxl_table = load_ptbxl_arrays(ecg_cache, ptbxl, normalize, stage="image_quality_head")
    quality.check_rate(data.fs, str(ecg_cache))  # the heads' bands are in Hz: their targets need their rate
    rng = np.random.default_rng(seed)
    train = np.sort(rng.permutation(data.train)[:n_train])
    seeds = rng.integers(0, 2**31 - 1, size=len(train))
    augment = rng.random(len(train)) < augment_probability
    noise = fill_missing_leads(_noise_of_signals(model, data.signals[train], data.masks[train]), len(quality.leads))
    usable = ~np.isnan(noise).any(1)  # a record with no lead at all says nothing
    train, seeds, augment, noise = train[usable], seeds[usable], augment[usable], noise[usable]
    images = render_set(data.signals[train], data.fs, seeds, augment, model.image_encoder.config, workers, progress,
                        "train")
    head, penalty = fit_head(_descriptors(model, images), noise, pair_fingerprint(model.image_encoder, quality))
    folds = ptbxl_table.table.loc[data.ids[train], "strat_fold"].astype(int)
    return head, {"n_train": int(len(train)), "train_folds": sorted(set(folds.tolist())),
                  "train_records": [int(i) for i in data.ids[train]], "penalty": penalty,
                  "held_out": held_out_report(model, head, data, ptbxl_table, n_held_out, workers, progress, trained)}


def held_out_report(model, head: ImageQuality, data, ptbxl_table, n: int, workers: int, progress: bool,
                    trained: frozenset[int] = frozenset()) -> dict:
    """`noise_reading` over PTB-XL fold-9 records of ECG-QA *valid* patients with PTB-XL's noise columns, each
    rendered once clean and once distorted: the split for model selection, which no stage trains on (the signal
    heads were fitted on a stage's ECG-QA train records, which cover nearly every other fold-9 record, so only
    these are unseen by both readers); ``trained``: the model's training records, left out should any be here."""
    from ecgllm.datasets.split_policy import load_policy
    from ecgllm.training.distill_image import render_set

    policy = load_policy()
    valid = np.isin(data.ids[data.valid], list(policy.valid_patient_records - policy.test_patient_records - trained))
    fold9 = data.valid[valid]
    known = fold9[ptbxl_table.table.loc[data.ids[fold9], "has_official_metadata"].to_numpy(bool)]
    rows = np.sort(np.random.default_rng(1).permutation(known)[:n])
    if len(rows) == 0:
        print("no PTB-XL fold 9 record of an ECG-QA valid patient with noise columns: no held-out report",
              file=sys.stderr)
        return {}
    seeds = np.arange(len(rows)) + 40_000_003
    pages = {f"image_{name}": render_set(data.signals[rows], data.fs, seeds, np.full(len(rows), augment),
                                         model.image_encoder.config, workers, progress, f"held out, {name}")
             for name, augment in (("clean", False), ("distorted", True))}
    return noise_reading(model, head, data.signals[rows], data.masks[rows], pages, ptbxl_table.table, data.ids[rows])


def noise_reading(model, head: ImageQuality, signals: np.ndarray, masks: np.ndarray, pages: dict[str, np.ndarray],
                  table, ecg_ids: np.ndarray) -> dict:
    """Per noise kind (record level: in any lead), the AUC against PTB-XL's noise columns (``table``, records
    ``ecg_ids``) of the model's signal-quality heads reading ``signals`` and of the image quality ``head`` reading
    each set of ``pages`` (uint8 renders of the same records, `render_set`); kinds that no record, or every record,
    has are left out."""
    from sklearn.metrics import roc_auc_score

    from ecgllm.datasets.ecgqa_attributes import noise_leads_table
    from ecgllm.models.signal_quality import QUALITY_KINDS
    from ecgllm.training.signal_quality import noise_targets

    known = table.loc[[int(i) for i in ecg_ids], "has_official_metadata"].to_numpy(bool)  # the others: noise unknown
    ecg_ids, signals, masks = np.asarray(ecg_ids)[known], signals[known], masks[known]
    pages = {name: images[known] for name, images in pages.items()}
    leads = model.label_tokens.quality.leads
    _, truth = noise_targets(noise_leads_table(table, [int(i) for i in ecg_ids], leads))
    scores = {"signal": _noise_of_signals(model, signals, masks)}
    for name, images in pages.items():
        scores[name] = head.logits(torch.from_numpy(_descriptors(model, images))).numpy()  # AUC: logits rank alike
    report = {"n": int(len(ecg_ids))}
    for k, kind in enumerate(QUALITY_KINDS):
        y, column = truth[:, k], k * (1 + len(leads))  # the record's entry of this kind
        if 0 < y.sum() < len(y):
            report[kind] = {"positives": int(y.sum()),
                            **{name: round(float(roc_auc_score(y, s[:, column])), 3) for name, s in scores.items()}}
    return report
