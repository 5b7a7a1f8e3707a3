"""ECG images: render speed, image vs signal reading on PTB-XL fold 10, and real printed ECGs zero-shot.

    python benchmarks/images.py --model CHECKPOINT --distill runs/ecgqa/image_encoder \
        --generated-test runs/ecgqa/data/test_generated.json --signals cache/ptbxl100 --limit 30
    -> benchmarks/results/images.json, docs/results/images.md   (--page-only: the page again from the JSON)

1. Render speed at 1100x850 (100 dpi, 3x4 + rhythm strip): clean and with distortions, in one process and in
   two (this machine's cores); baseline in the same run: the matplotlib multi-lead plot (`ecgllm plot`).
2. Superclass and 71-statement macro AUC of the checkpoint's image encoder on clean and distorted renders of
   PTB-XL fold 10 ∩ ECG-QA test vs its signal encoder on the same records (`fold10_test_reading`); the
   distillation run's own fold-10 report is kept beside it when ``--distill`` names the run (without it, the
   recipe the checkpoint's image encoder recorded, `image_encoder.json`, describes the distillation).
3. ECG-QA exact match on generated ECG-QA test questions with the ECGs given as signals, clean renders and
   distorted renders (the signal vs image gap of the whole model).
4. The real printed ECGs in ../shared/data/external/ecg_images (20 photographed/printed 12-lead reports:
   normal, myocardial infarction, abnormal heartbeat, history of MI): the model is asked "Is this a normal
   ECG?" (ECG-QA's template), scored against label == normal; and the label tokens' P(normal ECG) as a score
   (AUC). Wilson 95% CIs: n is 20. The same printouts again with the renderer's print/photo distortions on top,
   five seeded draws (`printed_images_photographed`): does the reading hold on worse photographs?
5. Pictures that are no ECG page (blank, noise, a photo-like field, text, empty ECG paper, a gradient): the page
   check must refuse each or answer it with a warning; and how it treats the real printouts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import ROOT, SHARED, claim_run_folder, environment, same_tensors, stale_default_note, write_result

from ecgllm import read_ecg
from ecgllm.render import plot_ecg, render_ecg

BUNDLED = ROOT / "src/ecgllm/data/ptbxl_00001_lr.hea"
DOC = ROOT / "docs/results/images.md"


def _render(task: tuple[int, bool]) -> int:
    seed, augment = task
    return render_ecg(_ECG, augment=augment, seed=seed).image.size[0]


_ECG = read_ecg(BUNDLED)


def render_speed(n: int) -> dict:
    import tempfile

    out = {}
    for augment in (False, True):
        t0 = time.perf_counter()
        for seed in range(n):
            render_ecg(_ECG, augment=augment, seed=seed)
        out[f"{'augmented' if augment else 'clean'}_1proc_per_s"] = round(n / (time.perf_counter() - t0), 1)
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_render, [(s, augment) for s in range(4)]))  # start the workers
            t0 = time.perf_counter()
            list(pool.map(_render, [(s, augment) for s in range(n)], chunksize=8))
        out[f"{'augmented' if augment else 'clean'}_2proc_per_s"] = round(n / (time.perf_counter() - t0), 1)
    with tempfile.TemporaryDirectory() as tmp:
        k = max(5, n // 10)
        t0 = time.perf_counter()
        for i in range(k):
            plot_ecg(_ECG, Path(tmp) / f"{i}.png")
        out["baseline_matplotlib_plot_per_s"] = round(k / (time.perf_counter() - t0), 2)
    out["speedup_vs_matplotlib"] = round(out["clean_1proc_per_s"] / out["baseline_matplotlib_plot_per_s"], 1)
    return out


EXAMPLES = DOC.with_name("images_examples.jpg")  # a photo-like sheet: JPEG is a sixth of a PNG
EXAMPLE_PAGES = (("3x4", False, 0), ("3x4", True, 1), ("6x2", True, 2), ("12x1", True, 5))  # layout, distorted, seed


def draw_examples(path: Path = EXAMPLES) -> list[dict]:
    """The bundled record rendered as the renders of this page are drawn: clean, and with seeded print/photo
    distortions in each layout, side by side at half size (what the image encoder reads, as a picture). Returns
    each page's layout, seed and the distortions applied."""
    from PIL import Image

    pages = [(layout, seed, render_ecg(_ECG, layout, augment=augment, seed=seed))
             for layout, augment, seed in EXAMPLE_PAGES]
    width, height = pages[0][2].image.size[0] // 2, pages[0][2].image.size[1] // 2
    sheet = Image.new("RGB", (2 * width, 2 * height), "white")
    for i, (_, _, page) in enumerate(pages):
        sheet.paste(page.image.resize((width, height), Image.LANCZOS), ((i % 2) * width, (i // 2) * height))
    sheet.save(path, quality=85, optimize=True)
    return [{"layout": layout, "seed": seed, "distortions": sorted(page.augmentations)} for layout, seed, page in pages]


PRINTOUTS = SHARED / "external/ecg_images"
PHOTO_SEEDS = (1, 2, 3, 4, 5)  # the seeds of the printouts' extra distortions (one draw per picture and seed)


def read_printouts(assistant, images: list, truth: np.ndarray) -> tuple[list[dict], dict]:
    """Each picture asked "Is this a normal ECG?" (one at a time after load, page check included) and its label
    tokens' P(normal ECG): (per-picture rows, the summary scored against ``truth``, True where normal)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from ecgllm.evaluation.answers import parse_answer
    from ecgllm.evaluation.stats import wilson_ci
    from ecgllm.models.page_check import NotAnECGPageError

    model, processor = assistant.model, assistant.processor
    # the classifier head scores the 71 statements, then the 5 superclasses: NORM's superclass column
    normal_column = len(model.label_vocab["all71"]) + model.label_vocab["superclass"].index("NORM")
    rows, seconds = [], []
    for image in images:
        started = time.perf_counter()
        try:
            answered = assistant.ask(image, "Is this a normal ECG?", max_new_tokens=8, measure=False)
            answer, page = answered.text, "unlike" if answered.warnings else "typical"
        except NotAnECGPageError:  # refused by the page check: no answer, counted wrong
            answer, page = "", "refused"
        seconds.append(time.perf_counter() - started)
        parsed = parse_answer(answer, ("yes", "no")).answers
        with torch.no_grad():  # pooled as the served label tokens pool: the signal encoder's own `pool`
            pooled = model.encoder.pool(model.image_encoder(processor.prepare_images([image])))
            p_normal = float(torch.sigmoid(model.label_tokens.head(pooled))[0, normal_column])
        rows.append({"answer": answer, "page_check": page, "said_normal": None if not parsed else "yes" in parsed,
                     "p_normal": round(p_normal, 4)})
    said = [r["said_normal"] for r in rows]
    correct = int(sum(s is not None and s == t for s, t in zip(said, truth)))
    scores = np.array([r["p_normal"] for r in rows])
    p_correct = int(((scores >= 0.5) == truth).sum())
    return rows, {"n": len(rows), "llm_accuracy": round(correct / len(rows), 3),
                  "llm_ci95": [round(v, 3) for v in wilson_ci(correct, len(rows))],
                  "llm_unparsed": sum(s is None for s in said), "llm_said_normal": sum(bool(s) for s in said),
                  "label_token_accuracy": round(p_correct / len(rows), 3),
                  "label_token_ci95": [round(v, 3) for v in wilson_ci(p_correct, len(rows))],
                  "label_token_auc": round(float(roc_auc_score(truth, scores)), 3),
                  "page_check": {v: sum(r["page_check"] == v for r in rows) for v in ("typical", "unlike", "refused")},
                  "answer_seconds_median": round(float(np.median(seconds)), 3)}


def load_printouts() -> tuple:
    """The real printouts: their labels table, True where normal, and the pictures as read."""
    import pandas as pd

    labels = pd.read_csv(PRINTOUTS / "labels.csv")
    return labels, (labels.label == "normal").to_numpy(), [read_ecg(PRINTOUTS / f) for f in labels.file]


def printed_images(assistant, printouts: tuple) -> dict:
    """The printouts (`load_printouts`) as they are, read by ``assistant`` (an `ECGAssistant`)."""
    import torch

    labels, truth, originals = printouts
    rows, summary = read_printouts(assistant, originals, truth)
    return {**summary, "task": "normal vs not normal (MI, abnormal heartbeat, history of MI)",
            "majority_accuracy": round(max(truth.mean(), 1 - truth.mean()), 3), "threads": torch.get_num_threads(),
            "per_image": [{"file": f, "label": label, **row} for f, label, row in zip(labels.file, labels.label, rows)]}


def printed_images_photographed(assistant, printouts: tuple, printed: dict,
                                seeds: tuple[int, ...] = PHOTO_SEEDS) -> dict:
    """The same printouts photographed worse: each picture with the renderer's print/photo distortions on top
    (`ecgllm.render.augment.distort`: rotation, perspective, wrinkles, creases, shadow, blur, sensor noise, JPEG,
    each with its training probability), one seeded draw per picture and seed. Whether the reading holds on
    worse pictures of the same pages; nothing is fitted, and the distortions were made for renders, not chosen
    on these pictures. ``printed``: `printed_images`' result, the answers each draw is compared with."""
    from ecgllm.io.image import ECGImage
    from ecgllm.render.augment import distort

    labels, truth, originals = printouts
    before = {row["file"]: row["said_normal"] for row in printed["per_image"]}
    draws = []
    for seed in seeds:
        images, applied = [], []
        for index, original in enumerate(originals):
            done: dict = {}
            picture = distort(original.image.copy(), np.random.default_rng([seed, index]), done)
            images.append(ECGImage(picture, {**original.meta, "distortions": done}))
            applied.append(sorted(done))
        rows, summary = read_printouts(assistant, images, truth)
        # the same yes/no as the picture as it is; a refused or unparsed answer is never the same
        same = sum(row["said_normal"] is not None and row["said_normal"] == before[file]
                   for row, file in zip(rows, labels.file))
        draws.append({"seed": seed, **summary, "same_answer": same, "distortions_per_picture":
                      round(float(np.mean([len(a) for a in applied])), 2), "applied": applied})
    accuracy = [d["llm_accuracy"] for d in draws]
    auc = [d["label_token_auc"] for d in draws]
    return {"seeds": list(seeds), "draws": draws, "llm_accuracy_mean": round(float(np.mean(accuracy)), 3),
            "llm_accuracy_min": min(accuracy), "label_token_auc_mean": round(float(np.mean(auc)), 3),
            "label_token_auc_min": min(auc),
            "same_answer_share": round(sum(d["same_answer"] for d in draws) / sum(d["n"] for d in draws), 3)}


def not_ecg_pictures(model_dir: str) -> dict:
    """Pictures that are no ECG page (drawn here, seeded), through the checkpoint's page check
    (`ecgllm.models.page_check`): each must be refused or answered with a warning, never plainly."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter

    from ecgllm import ECGAssistant
    from ecgllm.models.page_check import NotAnECGPageError

    assistant = ECGAssistant.load(model_dir)
    if assistant.model.page_check is None:
        raise SystemExit(f"{model_dir}: its image encoder has no page check (scripts/fit_page_check.py)")
    rng = np.random.default_rng(0)
    size = (1100, 850)
    text = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(text)
    for line in range(40):
        draw.text((40, 20 + 20 * line), "The quick brown fox jumps over the lazy dog. " * 3, fill="black")
    grid = Image.new("RGB", size, "white")  # ECG paper with nothing printed on it
    draw = ImageDraw.Draw(grid)
    for x in range(0, size[0], 9):
        draw.line([(x, 0), (x, size[1])], fill=(250, 200, 200) if x % 45 else (235, 140, 140))
    for y in range(0, size[1], 9):
        draw.line([(0, y), (size[0], y)], fill=(250, 200, 200) if y % 45 else (235, 140, 140))
    field = gaussian_filter(rng.random((size[1], size[0])), 25)
    pictures = {
        "blank page": Image.new("RGB", size, "white"),
        "random noise": Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)),
        "smooth random field (photo-like)": Image.fromarray(
            (255 * (field - field.min()) / (field.max() - field.min())).astype(np.uint8)),
        "page of text": text,
        "ECG paper without traces": grid,
        "grey gradient": Image.fromarray(np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))),
    }
    from ecgllm.io.image import ECGImage

    rows = []
    for name, picture in pictures.items():
        distance = float(assistant.model.page_distances(assistant.processor.prepare_images(
            [ECGImage(picture, {"source": name})]))[0])
        try:
            verdict = "unlike" if assistant.ask(ECGImage(picture, {"source": name}), "Is this a normal ECG?",
                                                max_new_tokens=4, measure=False).warnings else "answered plainly"
        except NotAnECGPageError:
            verdict = "refused"
        rows.append({"picture": name, "distance": round(distance, 1), "verdict": verdict})
    # an ECG printed on plain paper is still an ECG (a tenth of the distortion renders have no grid): it is read
    from ecgllm.render.paper import PaperStyle, RenderOptions, render_paper

    plain, _ = render_paper(read_ecg(BUNDLED), RenderOptions(style=PaperStyle(grid=False)))
    gridless = float(assistant.model.page_distances(assistant.processor.prepare_images(
        [ECGImage(plain, {"source": "no grid"})]))[0])
    check = assistant.model.page_check
    return {"typical": round(check.typical, 1), "refuse": round(check.refuse, 1), "pictures": rows,
            "texture_view": check.texture is not None,
            "answered_plainly": sum(r["verdict"] == "answered plainly" for r in rows),
            "ecg_without_grid": {"distance": round(gridless, 1), "verdict": check.verdict(gridless)}}


def fold10_test_reading(model_dir: str, cache: str, ptbxl_dir: str, ecgqa_dir: str, n: int, workers: int) -> dict:
    """The checkpoint's image encoder against its signal encoder on renders of PTB-XL fold 10 ∩ ECG-QA test (the
    split policy keeps ECG-QA test patients out of every stage; `seen_by_checkpoint` checks it): superclass and 71-statement macro AUC from scores, superclass
    macro F1 and Hamming loss at p = 0.5. The records are rendered clean and with print/photo distortions (one
    seeded page each, the layout drawn as in distillation) and read as the served model reads them: the image
    encoder's tokens, the signal encoder's pooling, the label-token classifier head."""
    from ecgllm.datasets import ECGQA
    from ecgllm.datasets.split_policy import seen_by_checkpoint
    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.image_encoder import load_image_encoder
    from ecgllm.training.distill_image import (load_teacher, render_set, student_outputs, superclass_metrics,
                                               teacher_targets)
    from ecgllm.training.image_quality import noise_reading
    from ecgllm.training.pretrain_encoder import load_ptbxl_arrays

    folder = Path(model_dir)
    student, _ = load_image_encoder(folder)
    config = student.config
    encoder, head, saved = load_teacher(folder, config.n_tokens)
    data, ptbxl = load_ptbxl_arrays(cache, ptbxl_dir, saved["input"]["normalize"])
    test_ids = sorted(ECGQA(ecgqa_dir).split_ecg_ids("test"))
    rows = data.test[np.isin(data.ids[data.test], test_ids)]
    rows = np.sort(np.random.default_rng(0).permutation(rows)[:n])
    seeds = np.arange(len(rows)) + 10_000_019
    seen = seen_by_checkpoint(model_dir, data.ids[rows])
    if seen["records_seen_in_training"] is None or seen.get("stages_with_unrecorded_records"):
        raise SystemExit(f"{model_dir}: the checkpoint does not record what every stage trained on, so this "
                         f"benchmark cannot show that its fold 10 ∩ ECG-QA test records are unseen")
    if seen["records_seen_in_training"]:
        raise SystemExit(f"{model_dir}: {seen['records_seen_in_training']} of the {len(rows)} fold 10 ∩ ECG-QA test "
                         f"records were seen in training; this benchmark reads only records no stage saw")
    result = {"records": int(len(rows)), "split": f"PTB-XL fold 10 ∩ ECG-QA test ({len(rows)} records, seed 0)",
              "seen_in_training": seen}
    _, signal_logits = teacher_targets(encoder, head, data.signals[rows], data.masks[rows])
    result.update(superclass_metrics("signal", data.y[rows], signal_logits))
    pages = {}
    for name, augment in (("image_clean", False), ("image_augmented", True)):
        pages[name] = render_set(data.signals[rows], data.fs, seeds, np.full(len(rows), augment), config, workers,
                                 True, f"fold 10 ∩ test, {name.removeprefix('image_')}")
        result.update(superclass_metrics(name, data.y[rows], student_outputs(student, head, pages[name],
                                                                             encoder.pool)[1]))
    model = EcgLanguageModel.from_pretrained(folder)
    if model.image_quality is not None:  # a picture's noise, from the same renders, beside the signal heads'
        result["noise"] = noise_reading(model, model.image_quality, data.signals[rows], data.masks[rows], pages,
                                        ptbxl.table, data.ids[rows])
    return result


BLANK_QUALITY = "signal, quality slots blank"  # the signals, read as a picture is: no signal-quality reading


@contextlib.contextmanager
def blank_signal_quality(model):
    """The model answers signals with its signal-quality slots blank (NaN rows, as `_noise` gives a picture where
    the model has no image quality head), so the signal-vs-picture gap that comes from those slots alone can be
    measured."""
    import torch

    original = model._noise

    def blank(*args, **kwargs):
        out = original(*args, **kwargs)
        return None if out is None else torch.full_like(out, float("nan"))

    model._noise = blank
    try:
        yield
    finally:
        del model._noise


def test_patient_share(data: str, limit: int) -> dict:
    """How many of the ECGs the first ``limit`` sample ids of ``data`` ask about are ECGs of ECG-QA test patients
    (the page calls them test ECGs only when all are)."""
    from ecgllm.datasets.split_policy import load_policy
    from ecgllm.evaluation.ecgqa_score import first_samples, load_gold

    records = {int(i) for s in first_samples(load_gold([data]), limit) for i in s.ecg_id}
    return {"records": len(records), "of_test_patients": len(records & load_policy().test_patient_records)}


def ecgqa_modalities(model_dir: str, data: str, signals: str, limit: int, out: Path) -> dict:
    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, evaluate_ecgqa
    from ecgllm.models.default import load_checkpoint

    model, processor, _ = load_checkpoint(model_dir, "cpu", "float32")
    result, share = {}, test_patient_share(data, limit)  # the same questions in every modality
    for modality in ("signal", "image", "image-augmented", BLANK_QUALITY):
        blank = modality == BLANK_QUALITY
        # model= names the folder the model in memory came from: the run reports what of its ECGs training saw
        run = EcgqaRun(data=[data], ptbxl=signals, model=model_dir,
                       out=str(out / ("signal-blank-quality" if blank else modality)),
                       labels=str(SHARED / "ptbxl"), limit=limit, modality="signal" if blank else modality)
        with blank_signal_quality(model) if blank else contextlib.nullcontext():
            metrics = evaluate_ecgqa(run, model, processor)
        result[modality] = {"em": round(metrics["overall_em"], 3), "n": metrics["n"],
                            "seen_in_training": metrics.get("seen_in_training"),
                            "test_patient_records": share,
                            "ci95": [round(v, 3) for v in metrics["overall_em_ci95"]],
                            "per_attribute_type": {k: {"em": round(v, 3), "n": metrics["per_attribute_type_n"][k]}
                                                   for k, v in sorted(metrics["per_attribute_type"].items())}}
    return result


TARGETS = (  # issue targets on PTB-XL fold 10 ∩ ECG-QA test renders, and on the real printouts
    ("superclass macro AUC, distorted renders", "image_augmented_super_macro_auc", 0.90),
    ("superclass macro AUC, clean renders", "image_clean_super_macro_auc", 0.91),
    ("71-statement macro AUC, clean renders", "image_clean_all71_macro_auc", 0.85),
)


def attribute_table(ecgqa: dict) -> list[str]:
    """EM per attribute type (n), one column per modality: where pictures answer worse than signals."""
    kinds = sorted({k for v in ecgqa.values() for k in v["per_attribute_type"]})
    first = next(iter(ecgqa.values()))["per_attribute_type"]
    return ["By attribute type (EM). A question naming a noise gets a named slot filled from the signal-quality "
            "heads, which read the signal; for a picture, from the image quality head where the checkpoint has one "
            "(the section above), else the slot stays blank (`ecgllm.models.label_tokens`). "
            f"\"{BLANK_QUALITY}\" answers the same signals with those slots blank: what the slots alone account "
            "for." if BLANK_QUALITY in ecgqa else "By attribute type (EM):", "",
            "| attribute type | n | " + " | ".join(ecgqa) + " |", "|---|---|" + "---|" * len(ecgqa),
            *[f"| {kind} | {first.get(kind, {}).get('n', '')} | "
              + " | ".join(str(v["per_attribute_type"].get(kind, {}).get("em", "")) for v in ecgqa.values()) + " |"
              for kind in kinds], ""]


def noise_table(noise: dict, split: str) -> list[str]:
    """The picture's noise (the image quality head on the renders) beside the signal's (the signal-quality heads)."""
    kinds = [k for k in noise if k != "n"]
    return [f"## Noise from a picture: {split}", "",
            "A question naming a noise gets a named slot: for a signal, the signal-quality heads' probability; for a "
            "picture, the image quality head's (`ecgllm.models.image_quality`: ridge regression from the image "
            "encoder's early feature maps to the signal heads' logits, fitted on renders of training records by "
            "`scripts/fit_image_quality.py`). How well each ranks PTB-XL's noise columns on the same records "
            "(record level, AUC):", "",
            "| noise | records with it | signal heads, signal | image head, clean render | image head, distorted render |",
            "|---|---|---|---|---|",
            *[f"| {k} | {noise[k]['positives']} of {noise['n']} | {noise[k]['signal']} | {noise[k]['image_clean']} | "
              f"{noise[k]['image_augmented']} |" for k in kinds], ""]


def recipe_chain(described: dict) -> list[str]:
    """The distillation runs that made an image encoder (its saved description: `load_image_encoder`), first first:
    the ones it continued (its recorded lineage; for an encoder saved before lineage was recorded, the run its
    init_student names), then its own."""
    recipes = [*described.get("continued_from", []), described["distillation"]]
    names = [Path(r["output_dir"]).name for r in recipes]
    start = Path(recipes[0].get("init_student") or "").name
    if start and start not in ("final", "checkpoint"):  # a distillation run (not a run's or the packaged model)
        names.insert(0, start)
    return names


def distill_chain(result: dict) -> list[str]:
    """The chain a result recorded; a result written before chains were recorded had at most one continuation."""
    if "distill_chain" in result:
        return result["distill_chain"]
    return ["image_encoder", result["distill_run"]] if result.get("warm_started") else [result["distill_run"]]


def examples_section(examples: list[dict]) -> list[str]:
    """The example sheet (`draw_examples`) and what each of its pages is."""
    described = [f"{e['layout']}, " + (f"seed {e['seed']}: " + ", ".join(e["distortions"]) if e["distortions"]
                                        else "clean") for e in examples]
    return [f"![the bundled record rendered clean and distorted]({EXAMPLES.name})", "",
            "The bundled record (`ptbxl_00001_lr`) as the renders above are drawn, left to right and top to bottom: "
            + "; ".join(described) + " (`ecgllm render FILE --layout L --augment --seed N --no-measure` draws the "
            "same page).", ""]


def photographed_section(photo: dict) -> list[str]:
    """The real printouts read again under the renderer's print/photo distortions, one row per seed."""
    return [
        "### The same printouts photographed worse", "",
        "Each printout again with the renderer's print/photo distortions on top (`ecgllm.render.augment.distort`: "
        "rotation, perspective, wrinkles, creases, shadow, blur, sensor noise, JPEG, each with its training "
        f"probability), one seeded draw per picture for each of {len(photo['seeds'])} seeds. Nothing was fitted on "
        "them; the distortions were made for renders, not chosen on these pictures.", "",
        "| seed | distortions per picture | answered right | P(normal ECG) AUC | same answer as the picture as is | "
        "answered plainly / with the warning / refused |", "|---|---|---|---|---|---|",
        *[f"| {d['seed']} | {d['distortions_per_picture']} | {d['llm_accuracy']} | {d['label_token_auc']} | "
          f"{d['same_answer']} of {d['n']} | {d['page_check']['typical']} / {d['page_check']['unlike']} / "
          f"{d['page_check']['refused']} |" for d in photo["draws"]], "",
        f"Over the draws: answered right {photo['llm_accuracy_mean']} on average (lowest {photo['llm_accuracy_min']}), "
        f"AUC {photo['label_token_auc_mean']} (lowest {photo['label_token_auc_min']}); "
        f"{photo['same_answer_share']:.0%} of the answers are those given to the pictures as they are.", ""]


def write_doc(result: dict, command: str) -> None:
    r, d, p, q, t = result["render"], result["distillation"], result["printed"], result["ecgqa"], result["fold10_test"]
    n = result["not_ecg"]
    chain = distill_chain(result)
    shift = result.get("view_shift")  # a result written before view shifts read each page alone
    rows = [(label, t[key], goal) for label, key, goal in TARGETS]
    rows += [("real printouts: \"Is this a normal ECG?\" answered right", p["llm_accuracy"], 0.75),
             ("real printouts: normal-vs-abnormal AUC of P(normal ECG)", p["label_token_auc"], 0.90)]
    # ECG-QA EM from distorted pictures at most 5 points below EM from the signals, on the same questions
    em_gap = round(q["signal"]["em"] - q["image-augmented"]["em"], 3)
    gap = t["signal_super_macro_auc"] - t["image_augmented_super_macro_auc"]
    lines = [
        "# ECG images: renders, the image encoder, real printed ECGs", "",
        *([note, ""] if (note := stale_default_note(result)) else []),
        "Every number here is read from `benchmarks/results/images.json`, written by the last command below",
        "(the distillation run and the shipped checkpoint come first), except the last section's, read from the",
        "image-encoder selections' own results:", "", "```bash",
        f"ecgllm train recipes/ecgqa/{chain[0]}.yaml   # renders of folds 1-8 "
        "(no ECG-QA valid/test patient) -> the shipped signal encoder's tokens",
        *[f"ecgllm train recipes/ecgqa/{name}.yaml   # continued from the one above on fresh renders (init_student)"
          for name in chain[1:]],
        *([f"{selection_command(chain)}"] if len(chain) > 1 else []),
        *view_shift_selection(shift, chain),
        # a check with the texture view is what fit_page_check writes (seeded: the same file again); a run distilled
        # before the view existed got one from it afterwards
        *([f"python scripts/fit_page_check.py runs/ecgqa/{result['distill_run']} --signals cache/ptbxl100 --ptbxl "
           f"../shared/data/ptbxl --workers 2{f' --view-shift {shift}' if shift else ''}   # the page check, with its "
           "texture view" + (f"; the encoder set to read each picture as the mean of the page and four copies moved "
                             f"{shift} pixels" if shift else "")]
          if n.get("texture_view") else []),
        *([f"python scripts/ship_checkpoint.py src/ecgllm/data/checkpoint --image-encoder "
           f"runs/ecgqa/{result['distill_run']}   # the shipped model, its image encoder replaced (its card keeps "
           "its figures)"] if len(chain) > 1 else
          [f"python scripts/ship_checkpoint.py runs/{result['shipped_from']}/final --image-encoder "
           f"runs/ecgqa/{result['distill_run']}"]),
        *(["python scripts/fit_image_quality.py src/ecgllm/data/checkpoint --signals cache/ptbxl100 --ptbxl "
           "../shared/data/ptbxl   # a picture's noise, imitating the signal-quality heads"] if "noise" in t else []),
        command, "```", "", "## Targets", "",
        "| target | measured | goal | met? |", "|---|---|---|---|",
        *[f"| {label} | {value} | ≥ {goal} | {'yes' if value >= goal else f'no (by {goal - value:.3f})'} |"
          for label, value, goal in rows],
        f"| ECG-QA EM, signals minus distorted pictures | {em_gap} | ≤ 0.05 | "
        f"{'yes' if em_gap <= 0.05 else f'no (by {em_gap - 0.05:.3f})'} |", "",
        "## Rendering (1100×850, 3x4 + lead II rhythm strip)", "",
        "| | images/s |", "|---|---|",
        f"| clean, 1 process | {r['clean_1proc_per_s']} |", f"| clean, 2 processes | {r['clean_2proc_per_s']} |",
        f"| distorted, 1 process | {r['augmented_1proc_per_s']} |",
        f"| distorted, 2 processes | {r['augmented_2proc_per_s']} |",
        f"| baseline: matplotlib plot (`ecgllm plot`) | {r['baseline_matplotlib_plot_per_s']} |", "",
        *(examples_section(result["examples"]) if "examples" in result else []),
        f"## {t['split']}: image encoder vs signal encoder", "",
        "The shipped checkpoint's image encoder (distilled on "
        f"{d['n_train']} renders of PTB-XL folds 1-8 records without any ECG-QA valid/test patient, "
        f"{d.get('epochs', len(d.get('history', [])))} epochs"
        + (f", continued from {len(chain) - 1} earlier distillation{'s' if len(chain) > 2 else ''} on other renders: "
           + ", ".join(f"`{name}`" for name in chain[:-1]) if len(chain) > 1 else "")
        + ") against the signal encoder it imitates, on the same records, each "
        "rendered once clean and once with print/photo distortions; read as the served model reads a picture (the "
        "signal encoder's pooling, the label-token classifier head). Of these records, seen in training by any stage "
        f"of the checkpoint: {t['seen_in_training']['records_seen_in_training']} (the split policy keeps every "
        "record of an ECG-QA test patient out of every stage).", "",
        "| input | superclass macro AUC | superclass macro F1 | superclass Hamming loss | 71-statement macro AUC |",
        "|---|---|---|---|---|",
        *[f"| {label} | {t[k + '_super_macro_auc']} | {t[k + '_super_macro_f1']} | {t[k + '_super_hamming_loss']} | "
          f"{t[k + '_all71_macro_auc']} |" for label, k in (("signal (teacher)", "signal"), ("clean render", "image_clean"),
                                                              ("distorted render", "image_augmented"))], "",
        *(noise_table(t["noise"], t["split"]) if "noise" in t else []),
        "## ECG-QA exact match, the same questions with the ECGs as signals or pictures", "",
        *([f"Generated questions ({first_q['n']}, from `--generated-test`) over {share['records']} ECGs, "
           f"{share['of_test_patients']} of them of ECG-QA test patients; seen in training by any stage of the "
           f"checkpoint: {seen['records_seen_in_training']}.", ""]
          if (share := (first_q := next(iter(q.values()))).get("test_patient_records"))
          and (seen := first_q.get("seen_in_training") or {}).get("records_seen_in_training") is not None else []),
        "| ECGs given as | EM | 95% CI | n |", "|---|---|---|---|",
        *[f"| {k} | {v['em']} | {v['ci95'][0]}–{v['ci95'][1]} | {v['n']} |" for k, v in q.items()], "",
        *(attribute_table(q) if all("per_attribute_type" in v for v in q.values()) else []),
        "## Real printed ECGs, zero-shot", "",
        f"{p['n']} printed 12-lead reports ({p['task']}). The model is asked \"Is this a normal ECG?\".", "",
        "| reader | accuracy | 95% CI |", "|---|---|---|",
        f"| model's answer | {p['llm_accuracy']} | {p['llm_ci95'][0]}–{p['llm_ci95'][1]} |",
        f"| label tokens, P(normal ECG) ≥ 0.5 | {p['label_token_accuracy']} | "
        f"{p['label_token_ci95'][0]}–{p['label_token_ci95'][1]} |",
        f"| majority class | {p['majority_accuracy']} | |", "",
        f"P(normal ECG) as a score: AUC {p['label_token_auc']}; it is at least 0.5 for "
        f"{sum(x['p_normal'] >= 0.5 for x in p['per_image'])} of {p['n']} images. The model said \"normal\" for "
        f"{p['llm_said_normal']} of {p['n']} images; {p['llm_unparsed']} answers were not a yes/no."
        + (f" One answer took {p['answer_seconds_median']} s (median; one picture at a time after the model is loaded, "
           f"page check included, {p['threads']} PyTorch threads)." if "answer_seconds_median" in p else ""), "",
        *(photographed_section(result["printed_photographed"]) if "printed_photographed" in result else []),
        "## Pictures that are not ECG pages", "",
        "The page check (`ecgllm.models.page_check`) measures how far a picture's image tokens lie from those of the "
        "distillation's training renders" + (", and how far the texture of the image encoder's first feature maps lies "
        "from theirs (the larger of the two counts, in the tokens' units)" if n.get("texture_view") else "") +
        ". Its thresholds come from renders the encoder never trained on (PTB-XL fold 9 "
        "records of ECG-QA train patients; no valid or test record): "
        f"beyond {n['typical']} (99 % of them lie within) a picture is answered with a stated warning that it looks "
        f"unlike the pages the model learned from; beyond {n['refuse']} it is refused (\"could not be read as an ECG "
        "page\"). Nothing was fitted on the pictures below or on the printouts; an image encoder whose check answers "
        "any of these pictures plainly is not shipped (`image_encoder_truth_more` was not, while its check read the "
        "tokens alone: `benchmarks/results/image_encoder_truth_more_not_shipped.json`)." + (
            " The texture view was added because the page of text below was answered plainly by a check of the tokens "
            "alone, and it counts at half weight, a weight set after seeing that at full weight it warned on all 20 "
            "real printouts (their texture lies just beyond its typical distance): so neither the pictures below nor "
            "the printouts' verdicts judge the check any more." if n.get("texture_view") else ""), "",
        "| picture | distance | result |", "|---|---|---|",
        *[f"| {row['picture']} | {row['distance']} | {row['verdict']} |" for row in n["pictures"]], "",
        f"Real printouts above: {p['page_check']['typical']} answered plainly, {p['page_check']['unlike']} with the "
        f"warning, {p['page_check']['refused']} refused. An ECG printed on plain paper, without a grid, is still an "
        f"ECG (a tenth of the distorted training renders have no grid): distance {n['ecg_without_grid']['distance']}, "
        f"{n['ecg_without_grid']['verdict']}.", "",
        "## Reading", "",
        f"- From a distorted render the image encoder reaches superclass macro AUC "
        f"{t['image_augmented_super_macro_auc']} ({t['image_clean_super_macro_auc']} clean), "
        f"{gap:.3f} below the signal encoder on the same records ({t['signal_super_macro_auc']}).",
        "- The 20 printouts are too few to fit anything on: nothing here was fitted on them (a hidden set of "
        "real printouts judges the image path)" + ("; the page check's texture weight was chosen after seeing their "
                                                  "distances (the section above)" if n.get("texture_view") else "") +
        ".", "",
        *selection_section(result["distill_run"], chain)]
    DOC.write_text("\n".join(lines))


def _selections() -> dict[str, dict]:
    files = sorted((ROOT / "benchmarks/results").glob("image_encoder_selection*.json"))
    return {file.name: json.loads(file.read_text()) for file in files}


def selection_command(chain: list[str], selections: dict[str, dict] | None = None) -> str:
    """The command of the selection that chose the shipped run (the last of ``chain``), as it was run; before
    selections recorded their commands, the shipped run against the one it continued."""
    chosen = [f"{saved['command'].replace('../cache/', '')}   # chosen on {saved['split']}"
              + ("" if "folds 1-9" in saved["split"] else " (the script as of commit cf26575)")
              for saved in (selections or _selections()).values()
              if Path(saved["chosen"]).name == chain[-1] and "command" in saved]
    if chosen:
        return chosen[-1]
    return ("python benchmarks/image_encoder_selection.py --teacher src/ecgllm/data/checkpoint --candidates "
            f"{' '.join('runs/ecgqa/' + name for name in chain[-2:])} --signals cache/ptbxl100   # chosen on ECG-QA "
            "valid renders (never fold 10)")


def reading_label(row: dict) -> str:
    """How a selection row read its pictures, where the selection scored view shifts (rows with ``view_shift``)."""
    if "view_shift" not in row:
        return ""
    return f" read at view shift {row['view_shift']}" if row["view_shift"] else " reading the page alone"


def view_shift_selection(shift: int | None, chain: list[str], selections: dict[str, dict] | None = None) -> list[str]:
    """The last selection that chose reading pictures at the shipped encoder's view shift, as run, after the
    distillations it weighed that are not in the shipped encoder's ``chain``."""
    if not shift:
        return []
    chose = [saved for saved in (selections or _selections()).values()
             if saved.get("chosen_view_shift") == shift and "command" in saved]
    if not chose:
        return []
    runs = dict.fromkeys(Path(row["candidate"]).name for row in chose[-1]["candidates"])
    return [*[f"ecgllm train recipes/ecgqa/{run}.yaml   # weighed beside it, not chosen" for run in runs
              if run not in chain and run not in ("checkpoint", "final")],
            f"{chose[-1]['command'].replace('../cache/', '')}   # the view shift chosen on {chose[-1]['split']}"]


def selection_section(shipped_run: str, chain: list[str] | None = None) -> list[str]:
    """Every image-encoder selection on record (`benchmarks/image_encoder_selection.py`'s JSON files): the
    candidates' scores on ECG-QA valid renders and which one was kept, so the encoders tried and not shipped are
    on the page with the numbers that turned them down. ``chain``: the shipped encoder's distillations, first first
    (a choice the shipped encoder was continued from did ship, as its start)."""
    selections = _selections()
    if not selections:
        return []
    rules = sorted({saved["rule"] for saved in selections.values()})
    lines = ["## Image encoders weighed on ECG-QA valid", "",
             "Read from `benchmarks/results/image_encoder_selection*.json` (`benchmarks/image_encoder_selection.py`). "
             "Each selection renders its records once clean and once distorted and reads them as the served model "
             f"reads a picture; the rule: {'; '.join(rules)} (the first listed is the encoder shipped at the time). "
             "The encoder shipped now is the one measured above.",
             "", "| selection | candidate | clean superclass AUC | distorted | mean | chosen by the rule |",
             "|---|---|---|---|---|---|"]
    for name, saved in selections.items():
        if "teacher_signal" in saved:  # the signal encoder on the same records: what imitation alone aims at
            teacher = saved["teacher_signal"]
            lines.append(f"| `{name}` ({saved['split']}) | the teacher: the signal encoder reading the signals | "
                         f"{teacher['signal_super_macro_auc']} (signals) | – | – | |")
        for row in saved["candidates"]:
            shift = row.get("view_shift", 0)  # selections before view shifts read every page alone
            chosen = row["candidate"] == saved["chosen"] and shift == saved.get("chosen_view_shift", 0)
            lines.append(f"| `{name}` ({saved['split']}) | `{row['candidate']}`{reading_label(row)} | "
                         f"{row['image_clean_super_macro_auc']} | {row['image_augmented_super_macro_auc']} | "
                         f"{row['score']} | {'yes' if chosen else 'no'} |")
    lines.append("")
    for name, saved in selections.items():  # a choice that did not ship: its recipe's Outcome says why
        run = Path(saved["chosen"]).name
        if run in (shipped_run, "checkpoint", "final"):  # a model folder is the encoder shipped at the time
            continue
        if run in (chain or []):
            lines += [f"`{name}` chose `{run}` by its rule: the shipped encoder (`{shipped_run}`) was continued from "
                      "it.", ""]
        else:
            lines += [f"`{name}` chose `{run}` by its rule, and it was not shipped: `recipes/ecgqa/{run}.yaml` "
                      "(Outcome) says why.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint with an image encoder (required unless --page-only)")
    parser.add_argument("--distill", help="the image-distillation run that made --model's image encoder (its "
                        "result.json is kept in the results); default: the recipe --model's image_encoder.json records")
    parser.add_argument("--generated-test", help="generated ECG-QA test file (its ECGs: ECG-QA test; required unless "
                        "--page-only)")
    parser.add_argument("--signals", help="prepared PTB-XL cache (`ecgllm data prepare`; required unless --page-only)")
    parser.add_argument("--ptbxl", default=str(SHARED / "ptbxl"), help="PTB-XL labels folder")
    parser.add_argument("--ecgqa", default=str(SHARED / "ecgqa/ecgqa"), help="ECG-QA release folder (split files)")
    parser.add_argument("--n-eval", type=int, default=600, help="fold 10 ∩ ECG-QA test records rendered")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--limit", type=int, default=30, help="ECG-QA sample ids per modality")
    parser.add_argument("--render-n", type=int, default=100)
    parser.add_argument("--out", default="runs/images_eval", help="folder for the evaluation runs")
    parser.add_argument("--page-only", action="store_true",
                        help="write the page again from benchmarks/results/images.json (nothing is run)")
    args = parser.parse_args()
    if args.page_only:
        saved = json.loads((ROOT / "benchmarks/results/images.json").read_text())
        write_doc({**saved, "examples": draw_examples()}, saved["command"])
        print(f"wrote {DOC}")
        return
    missing = [f"--{name.replace('_', '-')}" for name in ("model", "generated_test", "signals") if not getattr(args, name)]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --page-only)")
    if not Path(args.generated_test).is_file():  # before the renders and the model load, not after them
        parser.error(f"--generated-test {args.generated_test}: no such file")
    command = (f"python benchmarks/images.py --model {args.model}"
               + (f" --distill {args.distill}" if args.distill else "") + " --generated-test "
               f"{args.generated_test} --signals {args.signals} --ptbxl {args.ptbxl} --ecgqa {args.ecgqa} "
               f"--n-eval {args.n_eval} --workers {args.workers} --limit {args.limit} --render-n {args.render_n} "
               f"--out {args.out}")
    from ecgllm.models.image_encoder import load_image_encoder

    encoders = {}
    for folder in filter(None, (args.model, args.distill)):
        try:
            encoders[folder] = load_image_encoder(folder)
        except FileNotFoundError:
            raise SystemExit(f"no image encoder in {folder}") from None
    # the page describes the --distill run as the one that made --model's image encoder: the same weights
    states = [encoder.state_dict() for encoder, _ in encoders.values()]
    if not all(same_tensors(states[0], state) for state in states[1:]):
        raise SystemExit(f"{args.model}'s image encoder is not the one {args.distill} distilled (other weights)")
    described = encoders[args.distill or args.model][1]
    made = described.get("distillation", {})
    if args.distill:
        distillation = json.loads((Path(args.distill) / "result.json").read_text())
    elif made:
        distillation = {"n_train": made["n_train"], "epochs": made["epochs"], "recipe": made,
                        "run_report": "not at hand (no --distill): the recipe the image encoder recorded"}
    else:
        raise SystemExit(f"{args.model}'s image_encoder.json records no distillation recipe: name the run (--distill)")
    shipped_from = json.loads((Path(args.model) / "config.json").read_text()).get("shipped_from") or "RUN"
    measured = claim_run_folder(Path(args.out), Path(args.model))
    from ecgllm import ECGAssistant

    assistant, printouts = ECGAssistant.load(args.model), load_printouts()  # read as they are, then worse
    result = {"render": render_speed(args.render_n),
              "fold10_test": fold10_test_reading(args.model, args.signals, args.ptbxl, args.ecgqa, args.n_eval,
                                                 args.workers),
              "distillation": distillation, "shipped_from": f"ecgqa/{shipped_from}",
              "distill_run": Path(args.distill).name if args.distill else Path(made["output_dir"]).name,
              "warm_started": bool(made.get("init_student")),
              "distill_chain": recipe_chain(described) if made else [Path(args.distill).name],
              "view_shift": encoders[args.model][0].config.view_shift,
              "ecgqa": ecgqa_modalities(args.model, args.generated_test, args.signals, args.limit, Path(args.out)),
              "printed": printed_images(assistant, printouts), "not_ecg": not_ecg_pictures(args.model),
              "measured_model": measured}
    result["printed_photographed"] = printed_images_photographed(assistant, printouts, result["printed"])
    result["examples"] = draw_examples()
    t = result["fold10_test"]
    flat = {"render_images_per_s": result["render"]["augmented_2proc_per_s"],
            "render_clean_images_per_s": result["render"]["clean_2proc_per_s"],
            "image_super_macro_auc": t["image_clean_super_macro_auc"],
            "image_augmented_super_macro_auc": t["image_augmented_super_macro_auc"],
            "image_all71_macro_auc": t["image_clean_all71_macro_auc"],
            "signal_super_macro_auc": t["signal_super_macro_auc"],
            "printed_images_accuracy": result["printed"]["llm_accuracy"],
            "printed_images_auc": result["printed"]["label_token_auc"],
            "printed_images_n": result["printed"]["n"],
            "printed_images_ci95": result["printed"]["llm_ci95"],
            "printed_photographed_accuracy_mean": result["printed_photographed"]["llm_accuracy_mean"],
            "printed_photographed_auc_mean": result["printed_photographed"]["label_token_auc_mean"],
            "not_ecg_pictures_answered_plainly": result["not_ecg"]["answered_plainly"]}
    write_result("images.json", {**flat, **result, "command": command, "environment": environment()})
    write_doc(result, command)


if __name__ == "__main__":
    main()
