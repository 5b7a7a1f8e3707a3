"""ECG images end to end: a distilled image encoder attached to a checkpoint answers about pictures through the
same projector and LLM; the distillation stage runs, resumes and reports; signal-only checkpoints refuse images."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgllm import read_ecg
from ecgllm.models.image_encoder import ImageEncoder, ImageEncoderConfig, image_input
from ecgllm.render import render_ecg
from tests.conftest import PTBXL_1, SHARED, needs_shared

CLI = [sys.executable, "-m", "ecgllm.serving.cli"]
TINY_IMAGE = {"height": 64, "width": 96, "widths": [4, 8], "heads": 2}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "photo.jpg"
    render_ecg(read_ecg(PTBXL_1), augment=True, seed=5).image.save(path, quality=85)
    return path


@pytest.fixture(scope="module")
def image_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with an (untrained) image encoder attached, saved and reloaded."""
    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.processor import EcgProcessor
    from ecgllm.training.distill_image import save_image_encoder
    from ecgllm.training.model_setup import attach_image_encoder

    root = tmp_path_factory.mktemp("imgckpt")
    model = EcgLanguageModel.from_pretrained(tiny_checkpoint)
    processor = EcgProcessor.from_pretrained(tiny_checkpoint)
    torch.manual_seed(0)
    student = ImageEncoder(ImageEncoderConfig(n_tokens=model.encoder.n_tokens, dim=model.encoder.dim, **TINY_IMAGE))
    save_image_encoder(root / "run", student, {"teacher": "test"}) if (root / "run").mkdir() is None else None
    attach_image_encoder(model, root / "run", processor)
    model.save_pretrained(root / "ckpt", processor)
    shutil.copytree(tiny_checkpoint.parent / "llm", root / "llm")  # the base LLM the config points at
    return root / "ckpt"


def test_image_input_inverts_ink_and_resizes(page):
    x = image_input(read_ecg(page).image, 64, 96)
    assert x.shape == (1, 64, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and np.median(x) < 0.5  # mostly paper (dark after inversion)


def test_a_checkpoint_with_an_image_encoder_answers_about_pictures_and_mixed_pairs(image_checkpoint, page):
    from ecgllm import ECGAssistant
    from ecgllm.models.placement import to_model_device

    assistant = ECGAssistant.load(image_checkpoint)
    assert assistant.model.image_encoder is not None and assistant.processor.config.image["height"] == 64
    answer = assistant.ask(page, "Is this a normal ECG?", max_new_tokens=4)
    assert isinstance(answer.text, str) and "image" in answer.measurements[0]
    mixed = assistant.compare(PTBXL_1, page, "What changed?", max_new_tokens=4)  # signal, then picture
    assert len(mixed.measurements) == 2 and "heart_rate" in mixed.measurements[0]
    # the picture's tokens come from the image encoder, in prompt order
    batch = assistant.processor([[{"role": "user", "content": "?"}]], [[read_ecg(PTBXL_1), read_ecg(page)]],
                                train=False)
    assert batch["ecg"].shape[0] == 1 and batch["images"].shape == (1, 1, 64, 96)
    assert batch["ecg_is_image"].tolist() == [False, True]
    batch = to_model_device(batch, assistant.model)
    features = assistant.model.encode(batch["ecg"], batch["ecg_mask"], batch["images"], batch["ecg_is_image"])
    dtype = next(assistant.model.parameters()).dtype  # bf16 on a GPU: encode() casts its inputs, so cast here too
    assert torch.allclose(features[1], assistant.model.image_encoder(batch["images"].to(dtype))[0])
    assert torch.allclose(features[0], assistant.model.encoder(batch["ecg"].to(dtype), batch["ecg_mask"])[0])


def test_signal_only_checkpoints_refuse_pictures_with_a_sentence(tiny_checkpoint, page):
    result = subprocess.run(CLI + ["ask", str(page), "Is this a normal ECG?", "--model", str(tiny_checkpoint)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 3
    assert "signals only" in result.stderr and "Traceback" not in result.stderr


def test_ecgqa_eval_with_the_ecgs_rendered_as_pictures(image_checkpoint, tmp_path):
    """`ecgllm eval ecgqa --modality image-augmented`: the same questions, every ECG drawn on paper first."""
    import json

    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, evaluate_ecgqa
    from tests.conftest import FIXTURES

    samples = [{"sample_id": i, "template_id": 1, "question_id": 0, "question_type": "single-verify",
                "attribute_type": "scp_code", "question": "Does this ECG show sinus rhythm?", "answer": ["yes"],
                "ecg_id": [1 + i % 2], "attribute": ["sinus rhythm"]} for i in range(3)]
    gold = tmp_path / "template/test/gold.json"
    gold.parent.mkdir(parents=True)
    gold.write_text(json.dumps(samples))
    run = EcgqaRun(data=[str(gold)], ptbxl=str(FIXTURES / "ptbxl"), out=str(tmp_path / "run"),
                   model=str(image_checkpoint), modality="image-augmented", batch_size=2, max_new_tokens=4)
    metrics = evaluate_ecgqa(run, progress=False)
    assert metrics["n"] == 3 and metrics["modality"] == "image-augmented"
    with pytest.raises(ValueError, match="modality"):
        evaluate_ecgqa(EcgqaRun(data=[str(gold)], ptbxl=str(FIXTURES / "ptbxl"), out=str(tmp_path / "x"),
                                model=str(image_checkpoint), modality="fax"), progress=False)


def test_rest_api_answers_about_an_uploaded_photo_and_shows_it(image_checkpoint, page, tiny_checkpoint):
    from fastapi.testclient import TestClient

    from ecgllm import ECGAssistant
    from ecgllm.serving.api import ServeSettings, create_app

    client = TestClient(create_app(ECGAssistant.load(image_checkpoint), ServeSettings(max_new_tokens=4)))
    photo = [("ecg", ("photo.jpg", page.read_bytes()))]
    r = client.post("/v1/ask", files=photo, data={"question": "Is this a normal ECG?"})
    assert r.status_code == 200, r.text
    assert "image" in r.json()["measurements"][0]
    shown = client.post("/v1/plot", files=photo).json()["records"][0]
    assert shown["kind"] == "image" and shown["image"].startswith("data:image/png;base64,")
    signals_only = TestClient(create_app(ECGAssistant.load(tiny_checkpoint), ServeSettings(max_new_tokens=4)))
    r = signals_only.post("/v1/ask", files=photo, data={"question": "Is this a normal ECG?"})
    assert r.status_code == 422 and "signals only" in r.json()["detail"]


def test_a_noise_question_about_a_picture_is_answered_with_a_note(image_checkpoint, page):
    """A picture leaves the signal-quality slots blank, so its noise is judged from the drawing alone: the answer
    says so (Python API, batches, REST), for pictures only and for noise questions only."""
    from fastapi.testclient import TestClient

    from ecgllm import ECGAssistant
    from ecgllm.serving.api import ServeSettings, create_app

    assistant = ECGAssistant.load(image_checkpoint)
    noise = "Does this ECG show baseline drift in lead V3?"
    noted = assistant.ask(page, noise, max_new_tokens=2, measure=False).warnings
    assert len(noted) == 1 and noted[0].startswith("the picture: noise is judged from the drawing alone")
    assert assistant.ask(PTBXL_1, noise, max_new_tokens=2, measure=False).warnings == []
    assert assistant.ask(page, "Is this a normal ECG?", max_new_tokens=2, measure=False).warnings == []
    pair = assistant.compare(PTBXL_1, page, "Which ECG shows any kind of noises?", max_new_tokens=2, measure=False)
    assert len(pair.warnings) == 1 and pair.warnings[0].startswith("the picture:")  # one picture of the two
    batched = assistant.ask_batch([(page, noise), (PTBXL_1, noise)], max_new_tokens=2)
    assert [len(a.warnings) for a in batched] == [1, 0]
    streamed: list[str] = []
    "".join(assistant.stream(page, noise, max_new_tokens=2, warnings=streamed))
    assert len(streamed) == 1
    client = TestClient(create_app(assistant, ServeSettings(max_new_tokens=2)))
    r = client.post("/v1/ask", files=[("ecg", ("photo.jpg", page.read_bytes()))], data={"question": noise})
    assert r.status_code == 200 and len(r.json()["warnings"]) == 1, r.text


def test_noise_questions_are_told_by_every_ecgqa_wording_and_pictures_numbered_as_the_page_check_does():
    """Every ECG-QA template and paraphrase about noise (filled with each noise and a lead) is a noise question, and
    no other template is; with [signal, picture, picture] the notes name "picture 1" and "picture 2"."""
    import json
    import string

    from ecgllm.io.image import ECGImage
    from ecgllm.models.signal_quality import QUALITY_KINDS
    from ecgllm.serving.assistant import NOISE_QUESTION, picture_noise_notes

    data = Path(__file__).resolve().parents[1] / "src/ecgllm/data"
    templates = json.loads((data / "ecgqa_templates.json").read_text())
    paraphrases = json.loads((data / "ecgqa_paraphrases.json").read_text())["templates"]

    class Filled(dict):
        def __missing__(self, key):
            return "lead V3" if key == "lead" else "sinus rhythm"

    checked = 0
    for template in templates:
        for wording in [template["pattern"], *paraphrases.get(str(template["template_id"]), [])]:
            for kind in QUALITY_KINDS:
                question = string.Template(wording).substitute(Filled(noise=kind))
                assert bool(NOISE_QUESTION.search(question)) == (template["attribute_type"] == "noise"), question
                checked += 1
    assert checked > 500
    for question in ("Is there baseline wander?", "Any muscle artifact?", "Is the signal quality good?"):
        assert NOISE_QUESTION.search(question)
    for question in ("Is there limb lead reversal?", "Is the rhythm regular?", "Is this a normal ECG?"):
        assert not NOISE_QUESTION.search(question)
    picture = ECGImage.__new__(ECGImage)  # only its type matters here
    notes = picture_noise_notes([read_ecg(PTBXL_1), picture, picture], "Which shows static noise?")
    assert [n.split(":")[0] for n in notes] == ["picture 1", "picture 2"]
    read = picture_noise_notes([picture], "Does this ECG show static noise?", read_by_head=True)
    assert len(read) == 1 and "read from the drawing by the image quality head" in read[0]


def test_image_instruction_data_trains_through_the_image_encoder(tmp_path, tiny_tokenizer):
    """`ecgllm data as-images` marks ECGs as renders; a training stage then feeds those pages through the
    (frozen) image encoder into the same projector and LLM, and the result reads pictures."""
    import copy
    import json

    import yaml
    from safetensors.torch import load_file

    from ecgllm.datasets.cache import ECGCache
    from ecgllm.io import ECGImage
    from ecgllm.training.data import ConversationDataset
    from ecgllm.training.distill_image import save_image_encoder
    from tests.conftest import make_training_workspace

    ws = make_training_workspace(tmp_path, copy.deepcopy(tiny_tokenizer), n_conversations=16)
    result = subprocess.run(CLI + ["data", "as-images", str(ws / "train.jsonl"), "-o", str(ws / "images.jsonl"),
                                   "--share", "0.5", "--seed", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.splitlines()[0])
    assert counts["conversations"] == 16 and counts["rendered_ecgs"] > 0 and counts["signal_ecgs"] > 0
    again = tmp_path / "again.jsonl"
    subprocess.run(CLI + ["data", "as-images", str(ws / "train.jsonl"), "-o", str(again), "--share", "0.5",
                          "--seed", "3"], capture_output=True, check=True)
    assert again.read_text() == (ws / "images.jsonl").read_text()  # seeded
    from ecgllm.render.pages import PageSpec, training_page

    specs = [PageSpec.from_reference(ref["render"]) for line in again.read_text().splitlines()
             for ref in json.loads(line)["ecgs"] if ref.get("render")]
    assert specs and all(spec == training_page(spec.seed, spec.augment) for spec in specs)  # distillation's pages
    dataset = ConversationDataset(ws / "images.jsonl", ECGCache.open(ws / "cache"))
    kinds = [type(e) for i in range(len(dataset)) for e in dataset[i][1]]
    assert ECGImage in kinds and any(k is not ECGImage for k in kinds)

    (tmp_path / "img").mkdir()
    torch.manual_seed(0)
    save_image_encoder(tmp_path / "img", ImageEncoder(ImageEncoderConfig(n_tokens=4, dim=16, **TINY_IMAGE)), {})
    recipe = {"stage": "instruction", "output_dir": str(tmp_path / "run"),
              "data": {"train": str(ws / "images.jsonl"), "ecg_cache": str(ws / "cache")},
              "model": {"llm": str(ws / "tiny-llm"), "encoder": "resnet1d",
                        "encoder_kwargs": {"widths": [8, 16], "n_tokens": 4}, "encoder_policy": "frozen",
                        "image_encoder_init": str(tmp_path / "img"),
                        "lora": {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}},
              "prep": {"fs": 100.0, "normalize": "zscore", "window_s": 10.0},
              "optim": {"lr": 0.001, "batch_size": 4, "max_steps": 3}, "save_every": 3}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = subprocess.run(CLI + ["train", str(tmp_path / "r.yaml"), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    final = tmp_path / "run/final"
    # the frozen image encoder (batch norm included) is saved exactly as given
    from ecgllm.models.model_folder import part_state

    saved = part_state(final, "image_encoder")
    assert all(torch.equal(v, load_file(tmp_path / "img/image_encoder.safetensors")[k]) for k, v in saved.items())
    from ecgllm import ECGAssistant

    assistant = ECGAssistant.load(final)
    page = tmp_path / "page.png"
    render_ecg(read_ecg(PTBXL_1), seed=1).image.save(page)
    assert isinstance(assistant.ask(page, "Is this a normal ECG?", max_new_tokens=3, measure=False).text, str)


def test_frozen_encoders_keep_their_batch_norm_statistics_in_training(image_checkpoint):
    from ecgllm.models.ecg_lm import EcgLanguageModel

    model = EcgLanguageModel.from_pretrained(image_checkpoint)
    model.ecg_config.encoder_policy = "frozen"
    model.train()
    assert model.llm.training and not model.encoder.training and not model.image_encoder.training


def test_distillation_layouts_are_drawn_apart_from_the_paper_colour():
    """Each layout gets yellowed pages as often as the others: the layout has its own random stream (it once
    shared the renderer's, and every yellowed training page was 3x4)."""
    from ecgllm.render.augment import PROBABILITY, random_style
    from ecgllm.render.pages import training_page

    pages: dict[str, list[bool]] = {}
    for seed in range(1200):
        applied: dict = {}
        random_style(np.random.default_rng(seed), applied)  # the renderer's first draw for this seed
        pages.setdefault(training_page(seed, True).layout, []).append("paper" in applied)
    assert set(pages) == {"3x4", "6x2", "12x1"}
    for layout, yellowed in pages.items():
        assert abs(np.mean(yellowed) - PROBABILITY["paper"]) < 0.1, (layout, np.mean(yellowed), len(yellowed))


def test_distillation_scores_renders_through_the_pooling_the_model_serves():
    """The label tokens read ``encoder.pool`` of the image tokens; the distillation's AUC must use the same
    pooling (it used a plain mean, which differs for a mean+max encoder)."""
    from ecgllm.models import build_encoder
    from ecgllm.training.distill_image import student_outputs

    torch.manual_seed(0)
    teacher = build_encoder("resnet1d", widths=(8, 16), n_tokens=4, pool="meanmax")
    student = ImageEncoder(ImageEncoderConfig(n_tokens=4, dim=teacher.dim, **TINY_IMAGE)).eval()
    head = torch.nn.Linear(teacher.dim, 3)
    images = (np.random.default_rng(0).random((2, TINY_IMAGE["height"], TINY_IMAGE["width"])) * 255).astype(np.uint8)
    tokens, logits = student_outputs(student, head, images, teacher.pool)
    with torch.no_grad():
        served = head(teacher.pool(torch.from_numpy(tokens))).numpy()
        mean_only = head(torch.from_numpy(tokens).mean(1)).numpy()
    assert np.allclose(logits, served, atol=1e-5) and not np.allclose(logits, mean_only, atol=1e-3)


def test_distillation_adds_the_records_own_labels_only_when_asked():
    """``truth_weight`` adds a binary cross-entropy of the served label logits against the record's PTB-XL labels to
    the token and teacher-probability terms; at 0 the loss is the imitation loss alone. A shuffled batch keeps each
    render with its own targets and labels."""
    from ecgllm.models import build_encoder
    from ecgllm.training.distill_image import DistillTask, ImageDistillConfig

    torch.manual_seed(0)
    teacher = build_encoder("resnet1d", widths=(8, 16), n_tokens=4, pool="meanmax")
    student = ImageEncoder(ImageEncoderConfig(n_tokens=4, dim=teacher.dim, **TINY_IMAGE)).eval()
    head = torch.nn.Linear(teacher.dim, 3)
    rng = np.random.default_rng(0)
    images = (rng.random((6, TINY_IMAGE["height"], TINY_IMAGE["width"])) * 255).astype(np.uint8)
    tokens = rng.normal(size=(6, 4, teacher.dim)).astype(np.float32)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    labels = (rng.random((6, 3)) < 0.5).astype(np.float32)

    def task(weight: float) -> DistillTask:
        config = ImageDistillConfig(output_dir="-", teacher="-", ecg_cache="-", ptbxl="-", batch_size=2,
                                    truth_weight=weight)
        return DistillTask(config, images, tokens, logits, teacher, head, labels)

    batch = next(iter(task(0.0).epoch_batches(0)))
    rows = [int(np.flatnonzero((images == (b.numpy()[0] * 255).round()).all(axis=(1, 2)))[0]) for b in batch[0]]
    assert rows != [0, 1]  # the epoch's order is shuffled, so alignment is tested
    assert np.array_equal(batch[3].numpy(), labels[rows]) and np.array_equal(batch[2].numpy(), logits[rows])
    with torch.no_grad():
        imitation, with_truth = (float(task(w).loss(student, batch)) for w in (0.0, 0.5))
        out = student(batch[0])
        served = head(teacher.pool(out))
        expected = float(torch.nn.functional.mse_loss(out, batch[1]) / task(0.0).scale
                         + torch.nn.functional.binary_cross_entropy_with_logits(served, torch.sigmoid(batch[2])))
        truth = float(torch.nn.functional.binary_cross_entropy_with_logits(served, batch[3]))
    assert imitation == pytest.approx(expected, rel=1e-5)  # the loss before truth_weight existed
    assert with_truth == pytest.approx(imitation + 0.5 * truth, rel=1e-5) and truth > 0


def test_distillation_moves_each_training_page_by_its_own_offset_within_the_bound():
    """``shift_pixels`` moves every page of a batch by a whole-pixel offset of its own, at most the bound on each
    axis and drawn from (seed, epoch, step): the same batch again, another batch otherwise; at 0 pages stay put."""
    from ecgllm.training.distill_image import DistillTask, ImageDistillConfig, shifted

    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.random((8, 1, 24, 32)).astype(np.float32))
    moved = shifted(pixels, np.random.default_rng(1), 3)
    offsets = []
    for page, out in zip(pixels, moved):
        found = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                 if torch.equal(torch.roll(page, (dy, dx), dims=(-2, -1)), out)]
        assert len(found) == 1
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # each page its own offset
    assert torch.equal(shifted(pixels, np.random.default_rng(1), 3), moved)

    images = (rng.random((4, TINY_IMAGE["height"], TINY_IMAGE["width"])) * 255).astype(np.uint8)
    targets = (np.zeros((4, 4, 8), np.float32), np.zeros((4, 3), np.float32))
    head = torch.nn.Linear(8, 3)

    def first_batch(shift: int, epoch: int) -> torch.Tensor:
        config = ImageDistillConfig(output_dir="-", teacher="-", ecg_cache="-", ptbxl="-", batch_size=4,
                                    shift_pixels=shift)
        task = DistillTask(config, images, *targets, torch.nn.Identity(), head, np.zeros((4, 3)))
        return next(iter(task.epoch_batches(epoch)))[0]

    still = first_batch(0, 0)
    assert torch.equal(still, torch.from_numpy(images[:, None] / np.float32(255)))
    assert torch.equal(first_batch(2, 0), first_batch(2, 0)) and not torch.equal(first_batch(2, 0), still)
    assert not torch.equal(first_batch(2, 0), first_batch(2, 1))


def test_a_view_shift_reads_the_mean_of_the_page_and_four_moved_copies(tmp_path):
    """Out of training, ``view_shift`` s averages the tokens of the page and of its copies moved s pixels up, down,
    left and right; the feature maps the image quality head reads stay the page's own; training reads the page
    alone; the shift is saved with the encoder, and an encoder saved before it existed reads one view."""
    import json

    from ecgllm.models.image_encoder import load_image_encoder
    from ecgllm.training.distill_image import save_image_encoder

    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(n_tokens=2, dim=16, **TINY_IMAGE)).eval()
    pages = torch.rand(3, 1, TINY_IMAGE["height"], TINY_IMAGE["width"])
    with torch.no_grad():
        alone, alone_maps = encoder.encode(pages, keep=(2,))
        views = [encoder(torch.roll(pages, offset, dims=(-2, -1))) for offset in ((4, 0), (-4, 0), (0, 4), (0, -4))]
        encoder.config.view_shift = 4
        tokens, maps = encoder.encode(pages, keep=(2,))
        assert torch.allclose(tokens, torch.stack([alone, *views]).mean(0), atol=1e-6)
        assert not torch.allclose(tokens, alone, atol=1e-4)
        assert torch.equal(maps[0], alone_maps[0])
        encoder.train()  # batch statistics: the same pages read with and without the shift must agree
        shifted_training_read = encoder(pages)
        encoder.config.view_shift = 0
        assert torch.equal(shifted_training_read, encoder(pages))
    encoder.eval()
    save_image_encoder(tmp_path, encoder, {"teacher": "test"})
    encoder.config.view_shift = 4
    (tmp_path / "shifted").mkdir()
    save_image_encoder(tmp_path / "shifted", encoder, {})
    assert load_image_encoder(tmp_path / "shifted")[0].config.view_shift == 4
    saved = json.loads((tmp_path / "image_encoder.json").read_text())
    del saved["config"]["view_shift"]  # as written before view shifts existed
    (tmp_path / "image_encoder.json").write_text(json.dumps(saved))
    assert load_image_encoder(tmp_path)[0].config.view_shift == 0


def test_a_warm_start_takes_an_encoder_read_at_any_view_shift_but_not_another_shape(tmp_path):
    """``init_student`` compares the weights' shape only: an encoder saved before view shifts existed, or read at a
    shift, warm-starts a student read at none; another width is refused with a sentence."""
    import json

    from ecgllm.errors import RecipeError
    from ecgllm.training.distill_image import load_student_init, save_image_encoder

    torch.manual_seed(0)
    earlier = ImageEncoder(ImageEncoderConfig(n_tokens=2, dim=16, view_shift=6, **TINY_IMAGE))
    for name, drop_shift in (("shifted", False), ("before", True)):
        (tmp_path / name).mkdir()
        save_image_encoder(tmp_path / name, earlier, {"distillation": {"output_dir": name}})
        if drop_shift:  # as written before view shifts existed
            saved = json.loads((tmp_path / name / "image_encoder.json").read_text())
            del saved["config"]["view_shift"]
            (tmp_path / name / "image_encoder.json").write_text(json.dumps(saved))
        student = ImageEncoder(ImageEncoderConfig(n_tokens=2, dim=16, **TINY_IMAGE))
        assert load_student_init(student, tmp_path / name) == [{"output_dir": name}]
        assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), earlier.state_dict().values()))
        assert student.config.view_shift == 0
    wider = ImageEncoder(ImageEncoderConfig(n_tokens=2, dim=16, **{**TINY_IMAGE, "widths": [4, 16]}))
    with pytest.raises(RecipeError, match="another shape"):
        load_student_init(wider, tmp_path / "before")


def test_the_page_check_is_refitted_only_in_a_distillation_run(tmp_path):
    """A model folder keeps no training renders, and an image encoder written into it would shadow its own: the
    refit refuses it with a sentence, before anything is written."""
    from ecgllm.errors import RecipeError
    from ecgllm.training.distill_image import fit_page_check_of_run

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RecipeError, match="is a model folder"):
        fit_page_check_of_run(tmp_path, None, "-", "-", view_shift=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@needs_shared
def test_the_ecgbench_suite_reads_renders_of_every_recording_through_the_image_encoder(image_checkpoint, tmp_path,
                                                                                       monkeypatch, tiny_checkpoint):
    """`ecgllm eval ecgbench --modality image-augmented`: PTB-XL records and the zero-shot recordings are each shown
    as a distorted paper render, drawn the same way in every run; a signal-only checkpoint is refused."""
    from ecgllm.evaluation import ecgbench
    from ecgllm.io.image import ECGImage

    shown = []
    original = ecgbench._batched

    def spy(answerer, prompts, batch, desc, progress):
        shown.extend(type(e) for p in prompts for e in p.ecgs)
        return original(answerer, prompts, batch, desc, progress)

    monkeypatch.setattr(ecgbench, "_batched", spy)
    metrics = ecgbench.run_ecgbench(tmp_path / "bench", str(SHARED / "ptbxl"), model=str(image_checkpoint), records=2,
                                    external=str(SHARED / "external"), batch_size=8, progress=False,
                                    modality="image-augmented")
    assert metrics["superclass_detection"]["questions"] == 10 and metrics["zero_shot_code15"]["questions"] == 60
    assert shown and set(shown) == {ECGImage}
    assert '"modality": "image-augmented"' in (tmp_path / "bench/metrics.json").read_text()
    from ecgllm.evaluation.ecgqa_eval import picture_of, rendered_source

    first = picture_of(read_ecg(PTBXL_1), True, 0, 1)
    again = rendered_source(lambda _: read_ecg(PTBXL_1), True, 0)(1)  # the ECG-QA evaluation draws it the same way
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(picture_of(read_ecg(PTBXL_1), True, 0, 2).image))
    with pytest.raises(ValueError, match="modality must be one of"):
        ecgbench.run_ecgbench(tmp_path / "x", str(SHARED / "ptbxl"), model=str(image_checkpoint), modality="photo")
    from ecgllm.models.processor import ImageNotSupportedError

    with pytest.raises(ImageNotSupportedError, match="signals only"):
        ecgbench.run_ecgbench(tmp_path / "y", str(SHARED / "ptbxl"), model=str(tiny_checkpoint), records=1,
                              batch_size=8, progress=False, modality="image")


def test_the_page_check_fits_thresholds_on_held_out_renders_and_round_trips(tmp_path):
    from ecgllm.models.page_check import REFUSE_FACTOR, PageCheck

    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(400, 6)), rng.normal(size=(200, 6))
    check = PageCheck.fit(train, held_out)
    distances = check.distance(held_out)
    assert np.isclose(check.typical, np.percentile(distances, 99)) and check.refuse == REFUSE_FACTOR * check.typical
    assert (distances > check.typical).sum() == 2  # one held-out render in a hundred gets the note
    assert check.verdict(0.0) == "typical" and check.verdict(check.typical * 1.2) == "unlike"
    assert check.verdict(check.refuse * 1.01) == "not an ECG page"
    far = check.distance(np.full(6, 20.0))[0]
    assert far > check.refuse
    check.save(tmp_path)
    again = PageCheck.load(tmp_path)
    assert np.isclose(again.distance(np.full(6, 20.0))[0], far) and again.typical == check.typical
    assert PageCheck.load(tmp_path / "none") is None


def test_the_texture_view_adds_its_distance_in_the_tokens_units_and_round_trips(tmp_path):
    """A picture typical by its tokens but unlike any render in its first feature maps (a page of text, to an
    encoder whose tokens learned the labels) is judged by the larger of the two views; old checks load as they were."""
    from types import SimpleNamespace

    from safetensors.numpy import load_file, save_file

    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.image_quality import page_descriptors
    from ecgllm.models.page_check import TEXTURE_LAYERS, TEXTURE_WEIGHT, PageCheck, page_features

    rng = np.random.default_rng(0)
    train, held_out = rng.normal(size=(400, 6)), rng.normal(size=(200, 6))
    train_texture, held_out_texture = rng.normal(size=(400, 4)), rng.normal(size=(200, 4))
    check = PageCheck.fit(train, held_out, train_texture, held_out_texture)
    tokens_only = PageCheck.fit(train, held_out)
    assert check.layers == TEXTURE_LAYERS and tokens_only.layers == () and check.typical == tokens_only.typical
    # a file of the format before the view (means, precision, thresholds) loads as a check of the tokens alone
    from safetensors.numpy import save_file as save_arrays

    save_arrays({"mean": tokens_only.mean, "precision": tokens_only.precision,
                 "thresholds": np.array([tokens_only.typical, tokens_only.refuse])}, str(tmp_path / "page_check.safetensors"))
    old = PageCheck.load(tmp_path)
    assert old.texture is None and old.layers == () and np.allclose(old.distance(held_out), tokens_only.distance(held_out))
    t_mean, t_precision, t_typical = check.texture
    assert np.isclose(t_typical, np.percentile(PageCheck(t_mean, t_precision, 0, 0).distance(held_out_texture), 99))
    text_page = check.distance(train.mean(0), np.full(4, 20.0))[0]  # typical tokens, far texture
    far_texture = PageCheck(t_mean, t_precision, 0, 0).distance(np.full(4, 20.0))[0]
    assert np.isclose(text_page, TEXTURE_WEIGHT * far_texture * check.typical / t_typical)
    assert tokens_only.distance(train.mean(0))[0] < tokens_only.typical and check.verdict(text_page) == "not an ECG page"
    with pytest.raises(ValueError, match="texture"):
        check.distance(held_out)
    check.save(tmp_path)
    again = PageCheck.load(tmp_path)
    assert np.isclose(again.distance(train.mean(0), np.full(4, 20.0))[0], text_page) and again.layers == TEXTURE_LAYERS
    saved = load_file(str(tmp_path / "page_check.safetensors"))
    save_file({**saved, "texture_layers": np.array([5])}, str(tmp_path / "page_check.safetensors"))
    with pytest.raises(ValueError, match="fit it again"):
        PageCheck.load(tmp_path)
    # the model reads both views from one pass of its float32 image encoder
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(n_tokens=2, dim=16, widths=[4, 8], height=64, width=96, heads=2)).eval()
    pixels = torch.rand(3, 1, 64, 96)
    with torch.no_grad():
        tokens, kept = encoder.encode(pixels, keep=TEXTURE_LAYERS)
    features, texture = page_features(tokens), page_descriptors(kept).double().numpy()
    fitted = PageCheck.fit(features, features, texture, texture)
    model = SimpleNamespace(image_encoder=encoder, page_check=fitted, _page_check_encoder=encoder)
    assert np.allclose(EcgLanguageModel.page_distances(model, pixels), fitted.distance(features, texture))
    tokens_check = PageCheck(fitted.mean, fitted.precision, fitted.typical, fitted.refuse)  # a check of old
    old_model = SimpleNamespace(image_encoder=encoder, page_check=tokens_check, _page_check_encoder=encoder)
    assert np.allclose(EcgLanguageModel.page_distances(old_model, pixels), tokens_check.distance(features))


def test_pictures_unlike_an_ecg_page_are_answered_with_a_warning_or_refused(image_checkpoint, page, tmp_path):
    """The wiring, with thresholds set around the distances of three pictures: the ECG page is answered plainly,
    a photo-like picture with a note (Python API, CLI on stderr, REST `warnings`), a blank page is refused (exit 3,
    HTTP 422) before anything is generated. The thresholds of a real model come from held-out renders
    (`benchmarks/images.py` reports them on real printouts and on pictures that are no ECG)."""
    from PIL import Image

    from ecgllm import ECGAssistant
    from ecgllm.models.page_check import NotAnECGPageError, PageCheck, page_features

    shutil.copytree(image_checkpoint.parent, tmp_path / "copy")  # the checkpoint and the base LLM it points at
    image_checkpoint = tmp_path / "copy" / image_checkpoint.name
    assistant = ECGAssistant.load(image_checkpoint)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (800, 600), "white").save(blank)
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((600, 800, 3)) * 255).astype(np.uint8)).save(photo)
    pictures = assistant.read([page, photo, blank])
    # what the check reads pictures with: the image encoder in float32 on the CPU, as loaded (not a rounded bf16 one)
    encoder = ECGAssistant.load(image_checkpoint, device="cpu", dtype="float32").model.image_encoder
    with torch.no_grad():
        features = page_features(encoder(assistant.processor.prepare_images(pictures)))
    reference = PageCheck(features[0], np.eye(features.shape[1]), 0.0, 0.0)
    to_page, to_photo, to_blank = reference.distance(features)
    assert to_photo > 0 and to_blank > 0 and to_photo != to_blank
    near, far = sorted([to_photo, to_blank])
    check = PageCheck(features[0], np.eye(features.shape[1]), (to_page + near) / 2, (near + far) / 2)
    check.save(image_checkpoint)  # the copy's folder: the CLI and API below load it
    unlike, refused = (photo, blank) if to_photo < to_blank else (blank, photo)
    assistant = ECGAssistant.load(image_checkpoint)
    assert assistant.ask(page, "Is this a normal ECG?", max_new_tokens=2).warnings == []
    noted = assistant.ask(unlike, "Is this a normal ECG?", max_new_tokens=2)
    assert len(noted.warnings) == 1 and "looks unlike the ECG pages" in noted.warnings[0]
    with pytest.raises(NotAnECGPageError, match="could not be read as an ECG page"):
        assistant.ask(refused, "Is this a normal ECG?", max_new_tokens=2)
    result = subprocess.run(CLI + ["ask", str(unlike), "Is this a normal ECG?", "--model", str(image_checkpoint)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "[note] the picture: looks unlike" in result.stderr
    result = subprocess.run(CLI + ["ask", str(refused), "Is this a normal ECG?", "--model",
                                   str(image_checkpoint)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3 and "could not be read as an ECG page" in result.stderr
    assert "Traceback" not in result.stderr

    from fastapi.testclient import TestClient

    from ecgllm.serving.api import ServeSettings, create_app

    client = TestClient(create_app(assistant, ServeSettings(max_new_tokens=2)))
    r = client.post("/v1/ask", files=[("ecg", ("photo.png", unlike.read_bytes()))], data={"question": "Normal?"})
    assert r.status_code == 200 and len(r.json()["warnings"]) == 1, r.text
    r = client.post("/v1/ask", files=[("ecg", ("blank.png", refused.read_bytes()))], data={"question": "Normal?"})
    assert r.status_code == 422 and "could not be read as an ECG page" in r.json()["detail"]
    # in bfloat16 the check still reads the picture in float32, where its thresholds were fitted
    bf16 = ECGAssistant.load(image_checkpoint)
    bf16.model.to(torch.bfloat16)
    with torch.no_grad():
        pixels = bf16.processor.prepare_images(pictures)
        assert np.allclose(bf16.model.page_distances(pixels), assistant.model.page_distances(pixels))
    assert next(bf16.model.image_encoder.parameters()).dtype == torch.bfloat16  # the model itself unchanged
    # a batch: the refused picture fails its own line only, the unlike one carries its warning
    import json

    lines = tmp_path / "questions.jsonl"
    lines.write_text("\n".join(json.dumps({"id": name, "ecg": str(path), "question": "Normal?"})
                               for name, path in (("page", page), ("unlike", unlike), ("refused", refused))) + "\n")
    result = subprocess.run(CLI + ["batch", str(lines), "-o", str(tmp_path / "answers.jsonl"), "--model",
                                   str(image_checkpoint), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = {row["id"]: row for row in map(json.loads, (tmp_path / "answers.jsonl").read_text().splitlines())}
    assert "warnings" not in answers["page"] and len(answers["unlike"]["warnings"]) == 1
    assert "could not be read as an ECG page" in answers["refused"]["error"]
    # the OpenAI endpoint: the warning as an extra field, in the last chunk when streamed; the refusal as a 400
    import base64

    def message(path):
        url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        return {"model": "ecgllm", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Is this a normal ECG?"}, {"type": "image_url", "image_url": {"url": url}}]}]}

    r = client.post("/v1/chat/completions", json=message(unlike))
    assert r.status_code == 200 and len(r.json()["warnings"]) == 1, r.text
    streamed = client.post("/v1/chat/completions", json={**message(unlike), "stream": True}).text
    events = [json.loads(e[len("data: "):]) for e in streamed.split("\n\n") if e.startswith("data: {")]
    assert len(events[-1]["warnings"]) == 1 and all("warnings" not in e for e in events[:-1])
    r = client.post("/v1/chat/completions", json=message(refused))
    assert r.status_code == 400 and "could not be read as an ECG page" in r.json()["error"]["message"]
    noted: list[str] = []
    assert "".join(assistant.stream(unlike, "Normal?", max_new_tokens=2, warnings=noted)) is not None
    assert len(noted) == 1


def test_a_page_check_records_its_view_shift_and_a_model_refuses_one_fitted_for_another(tmp_path, image_checkpoint):
    """The check compares a picture's tokens with those it was fitted on, which depend on the view shift: a model
    whose image encoder reads pictures at another shift refuses it with a sentence; a check saved before the shift
    was recorded loads as before."""
    from safetensors.numpy import load_file, save_file

    from ecgllm.models.ecg_lm import EcgLanguageModel
    from ecgllm.models.page_check import PageCheck

    rng = np.random.default_rng(0)
    check = PageCheck.fit(rng.normal(size=(100, 4)), rng.normal(size=(50, 4)), view_shift=6)
    check.save(tmp_path)
    assert PageCheck.load(tmp_path).view_shift == 6
    model = EcgLanguageModel.from_pretrained(image_checkpoint)
    assert model.image_encoder.config.view_shift == 0
    with pytest.raises(ValueError, match="fitted on pictures read at view shift 6, but the image encoder reads them "
                                         "at 0.*--view-shift 0"):
        model.set_page_check(PageCheck.load(tmp_path))
    model.image_encoder.config.view_shift = 6
    model.set_page_check(PageCheck.load(tmp_path))
    assert model.page_check.view_shift == 6
    saved = load_file(str(tmp_path / "page_check.safetensors"))
    del saved["view_shift"]  # as saved before the shift was recorded
    save_file(saved, str(tmp_path / "page_check.safetensors"))
    older = PageCheck.load(tmp_path)
    assert older.view_shift is None
    model.image_encoder.config.view_shift = 0
    model.set_page_check(older)


def test_a_models_fingerprint_tells_apart_two_readings_of_the_same_image_encoder(image_checkpoint, tmp_path,
                                                                                monkeypatch):
    """Results pages name the model they measured by its fingerprint; a view shift changes what a picture is
    answered with, so it changes the fingerprint (not the one without the picture path); a folder that reads the
    page alone keeps the fingerprint it had before the field existed."""
    import json

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import fingerprint, weights_fingerprint

    from ecgllm.models.model_folder import WEIGHT_FILES, saved_weights

    shifted = tmp_path / "shifted"
    shutil.copytree(image_checkpoint, shifted)
    config = json.loads((shifted / "config.json").read_text())
    config["image_encoder"]["config"]["view_shift"] = 6
    (shifted / "config.json").write_text(json.dumps(config))
    assert fingerprint(shifted) != fingerprint(image_checkpoint)
    assert fingerprint(shifted, signals_only=True) == fingerprint(image_checkpoint, signals_only=True)
    files = {p.relative_to(image_checkpoint).as_posix(): p.read_bytes() for p in image_checkpoint.rglob("*.safetensors")
             if p.relative_to(image_checkpoint).as_posix() not in WEIGHT_FILES}
    assert fingerprint(image_checkpoint) == weights_fingerprint(files, saved_weights(image_checkpoint))
