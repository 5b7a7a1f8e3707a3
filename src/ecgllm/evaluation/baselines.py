"""ECG-QA baselines, measured in the same run and scored by the same scorer as any model:

- ``constant``: "no" to every yes/no question and "none" to every other, with no training at all (where most ECGs
  show nothing that is asked about, this alone scores high);
- ``majority``: the most frequent training answer of each template (the question-only prior; a model that
  ignores the ECG can reach this);
- ``question-only``: a text classifier (TF-IDF + logistic regression) from the question to the answer set;
- ``classifier``: the pretrained ECG encoder (frozen) with one logistic-regression head per template over
  [ECG embedding(s), question features] -> answer set: the dedicated-classifier upper bound;
- ``text-tags``: the training-free pipeline — the encoder's own labels above a threshold written into the
  prompt of the same LLM, which never sees the signal.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ecgllm.datasets.ecgqa import QASample
from ecgllm.io.record import ECG

BASELINES = ("constant", "majority", "question-only", "classifier", "text-tags")


def answer_key(answers: Sequence[str]) -> str:
    return "; ".join(sorted(answers))


def write_predictions(samples: Sequence[QASample], answers: Sequence[str | list[str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for s, a in zip(samples, answers):
            answer = a.split("; ") if isinstance(a, str) and a else a
            fh.write(json.dumps({"sample_id": s.sample_id, "variant": s.variant, "answer": answer}) + "\n")
    return path


def constant_answers(test: Sequence[QASample]) -> list[str]:
    """"no" to a verify question, "none" to any other: the answer that needs neither training data nor the ECG."""
    return ["no" if s.question_type.endswith("verify") else "none" for s in test]


def majority_answers(train: Sequence[QASample], test: Sequence[QASample]) -> list[str]:
    per_template: dict[int, Counter] = {}
    for s in train:
        per_template.setdefault(s.template_id, Counter())[answer_key(s.answer)] += 1
    overall = Counter(answer_key(s.answer) for s in train).most_common(1)[0][0]
    return [per_template[s.template_id].most_common(1)[0][0] if s.template_id in per_template else overall
            for s in test]


def _question_vectorizer(train: Sequence[QASample]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit([s.question for s in train])


def question_only_answers(train: Sequence[QASample], test: Sequence[QASample], seed: int = 0) -> list[str]:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    vectorizer = _question_vectorizer(train)
    y = [answer_key(s.answer) for s in train]
    model = LogisticRegression(max_iter=300, C=10.0, random_state=seed)
    with threadpool_limits(1):  # lbfgs follows another path with more BLAS threads: one thread, one answer
        model.fit(vectorizer.transform([s.question for s in train]), y)
    return list(model.predict(vectorizer.transform([s.question for s in test])))


class EncoderFeatures:
    """Frozen pretrained encoder: pooled embeddings and label probabilities. ``run_dir`` is an `ecgllm train`
    encoder run, or an LLM checkpoint with label tokens (its encoder and the classifier head it carries: the very
    encoder the LLM reads, so the baseline shows what a classifier gets from the same features)."""

    def __init__(self, run_dir: str | Path) -> None:
        from ecgllm.models.encoder_source import encoder_head, encoder_labels, encoder_meta, encoder_state
        from ecgllm.models.encoders import build_encoder

        run_dir = Path(run_dir)
        config, head = encoder_meta(run_dir), encoder_head(run_dir)
        self.encoder = build_encoder(config["encoder"], **config["encoder_kwargs"]).eval()
        self.encoder.load_state_dict(encoder_state(run_dir))
        self.normalize, self.fs = config["input"]["normalize"], float(config["input"]["fs"])
        self.prep = config.get("prep")  # a checkpoint's exact input preparation, as its processor applies it
        self.labels = encoder_labels(run_dir) or {}
        self.head = None
        if head is not None:
            self.head = torch.nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
            self.head.load_state_dict(head)

    def _input(self, ecgs: Sequence[ECG]) -> tuple[torch.Tensor, torch.Tensor]:
        from ecgllm.models.encoder_source import ENCODER_TO_PREP_NORMALIZE
        from ecgllm.signal.prepare import PrepConfig, prepare

        # an encoder run of the earliest format names its normalisation only ("mv": the per-lead mean removed)
        prep = PrepConfig(**self.prep) if self.prep else PrepConfig(
            fs=self.fs, bandpass=None, normalize=ENCODER_TO_PREP_NORMALIZE.get(self.normalize, "center"),
            window_s=10.0)
        prepared = [prepare(e, prep) for e in ecgs]
        x = np.stack([p.signal for p in prepared])
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(np.stack([p.mask for p in prepared]))

    @torch.no_grad()
    def embed(self, ecgs: Sequence[ECG], batch: int = 128) -> np.ndarray:
        out = []
        for i in range(0, len(ecgs), batch):
            x, mask = self._input(ecgs[i:i + batch])
            out.append(self.encoder.pool(self.encoder(x, mask)).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.dim), np.float32)

    @torch.no_grad()
    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise ValueError("this encoder run has no classifier head (head.safetensors)")
        return torch.sigmoid(self.head(torch.from_numpy(embeddings))).numpy()


def _sample_features(samples: Sequence[QASample], embedding: dict[int, np.ndarray]) -> np.ndarray:
    first = np.stack([embedding[s.ecg_id[0]] for s in samples])
    last = np.stack([embedding[s.ecg_id[-1]] for s in samples])
    return np.concatenate([first, last, last - first], 1)


def classifier_answers(train: Sequence[QASample], test: Sequence[QASample], features: EncoderFeatures,
                       get_ecg: Callable[[int], ECG], seed: int = 0) -> list[str]:
    """One logistic-regression head per template over [ECG embeddings, question TF-IDF]."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ids = sorted({i for s in [*train, *test] for i in s.ecg_id})
    vectors = features.embed([get_ecg(i) for i in ids])
    embedding = dict(zip(ids, vectors))
    scaler = StandardScaler().fit(_sample_features(train, embedding))
    vectorizer = _question_vectorizer(train)

    def design(samples):
        ecg = csr_matrix(scaler.transform(_sample_features(samples, embedding)))
        return hstack([ecg, vectorizer.transform([s.question for s in samples])]).tocsr()

    fallback = majority_answers(train, test)
    answers = list(fallback)
    by_template: dict[int, list[int]] = {}
    for i, s in enumerate(test):
        by_template.setdefault(s.template_id, []).append(i)
    for template_id, rows in by_template.items():
        train_t = [s for s in train if s.template_id == template_id]
        labels = [answer_key(s.answer) for s in train_t]
        if len(set(labels)) < 2:
            continue  # one answer only in training: the majority answer is the classifier's answer too
        head = LogisticRegression(max_iter=500, C=1.0, random_state=seed).fit(design(train_t), labels)
        for i, a in zip(rows, head.predict(design([test[r] for r in rows]))):
            answers[i] = a
    return answers


def text_tags(features: EncoderFeatures, ecgs: Sequence[ECG], descriptions: dict[str, str],
              threshold: float = 0.5) -> list[str]:
    """The encoder's 71-statement labels above ``threshold``, as a sentence per ECG."""
    probs = features.probabilities(features.embed(ecgs))[:, : len(features.labels.get("all71", []))]
    codes = features.labels.get("all71", [])
    out = []
    for row in probs:
        found = [descriptions.get(codes[j], codes[j]) for j in np.flatnonzero(row >= threshold)]
        out.append(", ".join(found) if found else "no statement above threshold")
    return out


class TextTagsAnswerer:
    """The same LLM without the signal: the classifier's findings are written into its prompt."""

    def __init__(self, llm, tokenizer, features: EncoderFeatures, descriptions: dict[str, str],
                 max_new_tokens: int = 24) -> None:
        self.llm, self.tokenizer, self.features = llm.eval(), tokenizer, features
        self.descriptions, self.max_new_tokens = descriptions, max_new_tokens
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @torch.no_grad()
    def __call__(self, prompts) -> list[tuple[str, float]]:
        texts = []
        for p in prompts:
            findings = text_tags(self.features, p.ecgs, self.descriptions) if p.ecgs else []
            lines = [f"{tag or 'ECG'} findings from an ECG classifier: {f}." for tag, f in zip(p.tags, findings)]
            messages = [{"role": "user", "content": "\n".join([*lines, p.question, "Answer briefly."])}]
            texts.append(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = self.llm.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, batch["input_ids"].shape[1]:]
        return [(t.strip(), float("nan")) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def run_baselines(train: Sequence[str], data: Sequence[str], ptbxl: str, out: str, encoder: str | None = None,
                  llm: str | None = None, which: Sequence[str] = BASELINES, labels: str | None = None,
                  limit: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Every requested baseline on ``data`` (trained on ``train``), each scored like a model, one report."""
    from ecgllm.datasets.ptbxl import PTBXL
    from ecgllm.datasets.ptbxl_signals import PTBXLSignals
    from ecgllm.evaluation.ecgqa_eval import EcgqaRun, add_strata, labels_dir_for
    from ecgllm.evaluation.ecgqa_score import first_samples, load_gold, read_predictions, score_predictions, summarize
    from ecgllm.evaluation.report import run_info, write_run
    from ecgllm.evaluation.runner import run_samples

    unknown = sorted(set(which) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}")
    if {"classifier", "text-tags"} & set(which) and encoder is None:
        raise ValueError("the classifier and text-tags baselines need --encoder (a finished encoder run)")
    train_set = list(load_gold(train).samples.values())
    gold = load_gold(data)
    test = first_samples(gold, limit)
    gold.samples = {(s.variant, s.sample_id): s for s in test}
    labels_dir = labels_dir_for(EcgqaRun(data=data, ptbxl=ptbxl, out=out, labels=labels))
    source = PTBXLSignals.open(ptbxl)
    features = EncoderFeatures(encoder) if encoder else None
    results: dict[str, dict] = {}
    root = Path(out)
    for name in which:
        path = root / name / "predictions.jsonl"
        if name == "constant":
            write_predictions(test, constant_answers(test), path)
        elif name == "majority":
            write_predictions(test, majority_answers(train_set, test), path)
        elif name == "question-only":
            write_predictions(test, question_only_answers(train_set, test, seed), path)
        elif name == "classifier":
            source.prefetch({i for s in [*train_set, *test] for i in s.ecg_id})
            write_predictions(test, classifier_answers(train_set, test, features, source.get, seed), path)
        else:
            from ecgllm.models.llm import load_llm

            descriptions = (PTBXL.load(labels_dir).statements["description"].to_dict() if labels_dir else {})
            model, tokenizer = load_llm(llm)
            source.prefetch({i for s in test for i in s.ecg_id})
            run_samples(test, TextTagsAnswerer(model, tokenizer, features, descriptions), source.get, path,
                        seed=seed, progress=progress)
        table, extra = score_predictions(gold, read_predictions(path))
        table = add_strata(table, labels_dir)
        results[name] = summarize(table, extra, seed=seed)
        write_run(root / name, results[name], run_info(name, gold.version, seed), f"ECG-QA baseline: {name}",
                  table=table)
    summary = {"per_baseline": {n: r["overall_em"] for n, r in results.items()},
               "per_baseline_ci95": {n: r["overall_em_ci95"] for n, r in results.items()},
               "per_baseline_question_type": {n: r.get("per_question_type", {}) for n, r in results.items()},
               "train_samples": len(train_set), "test_samples": len(test)}
    qtypes = sorted({q for r in results.values() for q in r.get("per_question_type", {})})
    rows = ["| baseline | overall EM [95% CI] | " + " | ".join(qtypes) + " |", "|---|---|" + "---|" * len(qtypes)]
    for n, r in results.items():
        lo, hi = r["overall_em_ci95"]
        rows.append(f"| {n} | {r['overall_em']:.3f} [{lo:.3f}, {hi:.3f}] | "
                    + " | ".join(f"{r.get('per_question_type', {}).get(q, float('nan')):.3f}" for q in qtypes) + " |")
    write_run(root, summary, run_info("baselines", gold.version, seed, {"train": list(map(str, train)),
                                                                          "encoder": encoder, "llm": llm}),
              "ECG-QA baselines", {"Baselines": "\n".join(rows)})
    return summary
