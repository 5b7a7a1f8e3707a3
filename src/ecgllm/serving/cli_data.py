"""`ecgllm data ...`: download, cache, measure and generate datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgllm.errors import InputError
from ecgllm.serving.exit_codes import EXIT_INPUT, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE


def cmd_prepare(args: argparse.Namespace) -> int:
    from ecgllm.datasets.cache import build_cache
    from ecgllm.datasets.ptbxl import PTBXL
    from ecgllm.io.formats.wfdb_format import ptbxl_record_path
    from ecgllm.io.errors import ECGFileNotFoundError
    from ecgllm.signal import PrepConfig

    source = Path(args.source)
    ptbxl = PTBXL.load(args.metadata or source, records_root=source)
    if ptbxl.root is None:
        print(f"error: {source}: no records100/ or records500/ folder. Unpack or download PTB-XL first "
              "(ecgllm data download ptbxl --out DIR).", file=sys.stderr)
        return EXIT_INPUT
    paths, keep = [], []
    for ecg_id in ptbxl.ecg_ids:
        try:
            paths.append(ptbxl_record_path(ptbxl.root, int(ecg_id), prefer_fs=args.fs))
            keep.append(ecg_id)
        except ECGFileNotFoundError:
            continue
    if not paths:
        print(f"error: {source}: no PTB-XL record files found.", file=sys.stderr)
        return EXIT_INPUT
    columns = [c for c in ("patient_id", "age", "sex", "strat_fold", "has_official_metadata") if c in ptbxl.table]
    index = ptbxl.table.loc[keep, columns].reset_index()
    config = PrepConfig(fs=float(args.fs), bandpass=None, normalize="none", window_s=10.0)
    for note in ptbxl.missing:
        print(f"note: {note}", file=sys.stderr)
    if len(paths) < len(ptbxl.ecg_ids):
        print(f"note: {len(ptbxl.ecg_ids) - len(paths)} records listed in the metadata have no signal files",
              file=sys.stderr)
    try:
        out = build_cache(paths, index, args.out, config, source=f"PTB-XL ({source})", workers=args.workers,
                          progress=not args.quiet)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    print(f"wrote {out} ({len(paths)} records, {args.fs:g} Hz, 12 leads, 10 s)")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from ecgllm.datasets.download import download_ptbxl

    report = download_ptbxl(args.out, base_url=args.url, fs=args.fs, workers=args.workers, progress=not args.quiet)
    print(f"{args.out}: {report.downloaded} files downloaded ({report.resumed} resumed), "
          f"{report.skipped} already present and verified, {report.bytes / 2**20:.1f} MiB")
    return EXIT_OK


def _load_pool(args: argparse.Namespace, ptbxl) -> set[int]:
    """Records a generator may use: an ECG-QA split list (default) or PTB-XL folds of a split."""
    if args.pool == "ecgqa":
        from ecgllm.datasets import ECGQA

        pool = ECGQA(args.ecgqa).split_ecg_ids(args.split)
    else:
        pool = set(int(i) for i in ptbxl.split_ids(args.split))
    if getattr(args, "fold", None):
        folds = ptbxl.table["strat_fold"]
        pool = {i for i in pool if i in folds.index and int(folds.at[i]) in args.fold}
    if args.split == "train":
        from ecgllm.datasets.split_policy import load_policy

        policy = load_policy()
        if args.pool == "ptbxl":  # folds 1-8 hold ECG-QA valid/test patients: the train pool is without them
            held_out = policy.forbidden_in(pool)
            pool -= set(held_out)
            print(f"note: {len(held_out)} records of ECG-QA valid/test patients left out of the train pool "
                  f"(split policy {policy.sha256[:12]})", file=sys.stderr)
        policy.refuse(pool, source=f"--pool {args.pool} --split train", stage="data generate")
    return pool


def _measurements(path: str | None):
    import pandas as pd

    return pd.read_csv(path, index_col="ecg_id") if path else None


def cmd_measure(args: argparse.Namespace) -> int:
    from ecgllm.datasets.measurements import measure_records
    from ecgllm.datasets.ptbxl import PTBXL

    ptbxl = PTBXL.load(args.metadata or args.source, records_root=args.source)
    if ptbxl.root is None:
        print(f"error: {args.source}: no records100/ or records500/ folder.", file=sys.stderr)
        return EXIT_INPUT
    ids = [int(i) for i in ptbxl.ecg_ids]
    if args.ecgqa:  # ECG-QA's records only (every split: measuring is not training)
        from ecgllm.datasets import ECGQA

        qa = ECGQA(args.ecgqa)
        wanted = set().union(*(qa.split_ecg_ids(s) for s in ("train", "valid", "test")))
        ids = [i for i in ids if i in wanted]
    if args.limit is not None:
        ids = ids[: args.limit]
    paths = {i: ptbxl.record_path(i, prefer_fs=args.fs) for i in ids}
    if args.ecgqa_features:
        import pandas as pd

        from ecgllm.datasets.measurements import measure_ecgqa_records

        out = Path(args.out)
        if out.exists() and "rr_s" not in pd.read_csv(out, nrows=0).columns:
            print(f"error: {out} exists and holds no ECG-QA features (no rr_s column), so it cannot be resumed; "
                  f"name another --out", file=sys.stderr)
            return EXIT_INPUT

        # the output is its own resume file: an interrupted run keeps what it measured and goes on from there
        table = measure_ecgqa_records(paths, cache=out, workers=args.workers, progress=not args.quiet)
        print(f"wrote {args.out} ({len(table)} records asked for, {int(table['rr_s'].notna().sum())} with lead II "
              f"features, {int(table['axis_ecgqa_deg'].notna().sum())} with a heart axis)")
        return EXIT_OK
    table = measure_records(paths, workers=args.workers, progress=not args.quiet)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out)
    print(f"wrote {args.out} ({len(table)} records, {int(table['heart_rate'].notna().sum())} measured)")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    from ecgllm.datasets.conversation import from_ecgqa
    from ecgllm.datasets.ptbxl import PTBXL

    if args.pool == "ecgqa" and not args.ecgqa:
        print("error: --pool ecgqa needs --ecgqa DIR (the ECG-QA release folder), or use --pool ptbxl",
              file=sys.stderr)
        return EXIT_USAGE
    ptbxl = PTBXL.load(args.ptbxl)
    pool = _load_pool(args, ptbxl) & set(int(i) for i in ptbxl.ecg_ids)  # split records this dataset has
    measurements = _measurements(args.measurements)
    out = Path(args.out)
    if args.kind == "ecgqa":
        from ecgllm.datasets.ecgqa_attributes import build_attributes
        from ecgllm.datasets.ecgqa_generator import ECGQAGenerator, IncompatibleDrawError

        strata = None
        if args.intervention:
            from ecgllm.datasets.severity import strata_for

            strata = strata_for(ptbxl, pool)
        generator = ECGQAGenerator(build_attributes(ptbxl, measurements), pool, strata=strata)
        try:  # the generator refuses draws that cannot be combined (--intervention with --paired or --answer-groups)
            samples = generator.generate(args.n, seed=args.seed, intervention=args.intervention,
                                         template_ids=args.template_ids, paraphrase=args.paraphrase,
                                         paired=args.paired, include_held_out_wordings=args.split != "train",
                                         answer_groups=args.answer_groups, quota_split=args.split,
                                         answered_comparisons=args.answered_comparisons)
        except IncompatibleDrawError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
        if args.format == "official":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(samples))
        else:
            conversations = [from_ecgqa(s, split=args.split, source="ecgqa-generated") for s in samples]
            for c, s in zip(conversations, samples):  # data of an older generator can be told apart
                c.meta["generator_version"] = s["generator_version"]
                c.meta["sampling"] = s["sampling"]
                c.meta["draw"] = s["draw"]
                if "answer_quota" in s:
                    c.meta["answer_quota"] = s["answer_quota"]
            _write(conversations, out, args.format)
        count = len(samples)
    else:
        from ecgllm.datasets.instruct import InstructBuilder

        conversations = InstructBuilder(ptbxl, pool, measurements).build(args.n, seed=args.seed, split=args.split)
        _write(conversations, out, "llava" if args.format == "llava" else "jsonl")
        count = len(conversations)
    print(f"wrote {out} ({count} {args.kind} samples from {len(pool)} {args.split} records, seed {args.seed})")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    """Official ECG-QA files -> conversation JSONL (one question each), optionally a seeded subsample."""
    import numpy as np

    from ecgllm.datasets.conversation import from_ecgqa, write_jsonl
    from ecgllm.evaluation.ecgqa_score import load_gold

    samples = sorted(load_gold(args.official).samples.values(), key=lambda s: (s.variant or "", s.sample_id))
    if args.split not in ("valid", "test"):  # conversations to train on
        from ecgllm.datasets.ecgqa_templates import load_templates, never_trained_wording
        from ecgllm.datasets.split_policy import load_policy

        # none of an ECG-QA valid/test patient, and the held-out wordings stay unseen (Template.held_out_paraphrases)
        load_policy().refuse({e for s in samples for e in s.ecg_id}, source=str(args.official), stage="data convert")
        templates = load_templates()
        kept = [s for s in samples if s.template_id not in templates
                or not never_trained_wording(templates[s.template_id], s.question)]
        if len(kept) < len(samples):
            print(f"note: {len(samples) - len(kept)} questions in a held-out or unknown paraphrased wording left out",
                  file=sys.stderr)
        samples = kept
    if args.n and args.n < len(samples):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(samples), args.n, replace=False))
        samples = [samples[i] for i in keep]
    count = write_jsonl((from_ecgqa(s.to_official(), split=args.split, source=f"ecgqa-{s.variant or 'official'}")
                         for s in samples), args.out)
    print(f"wrote {args.out} ({count} conversations)")
    return EXIT_OK


def cmd_as_images(args: argparse.Namespace) -> int:
    import json

    from ecgllm.datasets.render_refs import as_images

    counts = as_images(args.conversations, args.out, args.share, args.augment_share, args.seed)
    print(json.dumps(counts))
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_debias(args: argparse.Namespace) -> int:
    import json

    from ecgllm.datasets.debias import annotate
    from ecgllm.datasets.ptbxl import PTBXL

    summary = annotate(args.conversations, args.out, PTBXL.load(args.ptbxl))
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_balance(args: argparse.Namespace) -> int:
    from ecgllm.datasets.answer_balance import balance_verify_answers, read_rows
    from ecgllm.datasets.conversation import write_json_lines

    try:
        rows = read_rows(args.conversations)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{exc}. Give a conversation JSONL (ecgllm data generate/convert writes one).") from None
    balanced, summary = balance_verify_answers(rows, args.seed, args.max_repeats)
    try:
        write_json_lines(balanced, args.out)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    added = sum(s["added"] for s in summary.values())
    for template, s in summary.items():
        print(f"template {template:>2}: yes {s['yes']:>5}, no {s['no']:>5}, repeated {s['added']:>5}")
    print(f"wrote {args.out} ({added} repeated conversations added over the wordings of {len(summary)} verify "
          f"templates)")
    return EXIT_OK


def _non_negative_int(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _write(conversations, out: Path, fmt: str) -> None:
    import json

    from ecgllm.datasets.conversation import write_jsonl

    if fmt == "llava":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([c.to_llava() for c in conversations], ensure_ascii=False))
    else:
        write_jsonl(conversations, out)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the commands that read every record of a PTB-XL folder."""
    p.add_argument("dataset", choices=["ptbxl"])
    p.add_argument("--source", required=True, help="dataset root with records100/ and/or records500/")
    p.add_argument("--metadata", help="folder with ptbxl_database.csv or ptbxl_labels.csv (default: --source)")
    p.add_argument("--out", required=True, help="what to create")
    p.add_argument("--fs", type=int, default=100, choices=[100, 500], help="sampling rate / record folder")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_data_commands(sub: argparse._SubParsersAction, formatter: type, exit_help: str) -> None:
    data = sub.add_parser("data", help="download, cache, measure and generate datasets",
                          description="Dataset tools.", formatter_class=formatter)
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = data_sub.add_parser(
        "prepare", formatter_class=formatter, help="build a memory-mapped training cache",
        description="Read every record of a dataset once (canonical 12 leads, resampled, 10 s) into a "
                    "memory-mapped float16 array with an index, so training loads it in seconds.",
        epilog=f"""examples:
  ecgllm data prepare ptbxl --source ptb-xl/ --out cache/ptbxl100
  ecgllm data prepare ptbxl --source unpacked/ --metadata shared/data/ptbxl --out cache/ptbxl100 --fs 100

{exit_help}""")
    _add_source_args(p)
    p.set_defaults(func=cmd_prepare)

    p = data_sub.add_parser(
        "download", formatter_class=formatter, help="fetch PTB-XL with resume and SHA-256 checks",
        description="Mirror PTB-XL from its public home: the metadata tables and records100/ (or records500/). "
                    "Every file is verified against the release's SHA256SUMS.txt; an interrupted run resumes.",
        epilog=f"""examples:
  ecgllm data download ptbxl --out ptb-xl/
  ecgllm data download ptbxl --out ptb-xl/ --fs both

{exit_help}""")
    p.add_argument("dataset", choices=["ptbxl"])
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--fs", default="100", choices=["100", "500", "both"], help="which record folders")
    p.add_argument("--url", default="https://physionet.org/files/ptb-xl/1.0.3/", help="release base URL")
    p.add_argument("--workers", type=int, default=8, help="parallel connections (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = data_sub.add_parser(
        "measure", formatter_class=formatter, help="measure every record into a CSV (numeric features)",
        description="Run ecgllm's measurements (rate, intervals, axis, quality) on every record of a dataset; "
                    "the CSV feeds the numeric-feature questions of the generators. With --ecgqa-features it "
                    "measures what ECG-QA's numeric and heart-axis answers are defined by instead (NeuroKit2 on "
                    "lead II, and leads I/aVF for the axis, at 500 Hz), about 0.15 s a record per worker; the "
                    "output CSV doubles as a resume file.",
        epilog=f"""examples:
  ecgllm data measure ptbxl --source ptb-xl/ --out measurements.csv
  ecgllm data measure ptbxl --source ptb-xl/ --metadata shared/data/ptbxl --ecgqa shared/data/ecgqa/ecgqa \\
      --ecgqa-features --out ecgqa_features.csv     # then: data generate ecgqa --measurements ecgqa_features.csv

{exit_help}""")
    _add_source_args(p)
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--ecgqa-features", action="store_true",
                   help="ECG-QA's own numeric features and heart axis (the source of its numeric and axis answers)")
    p.add_argument("--ecgqa", help="ECG-QA release folder (ecgqa/ptbxl): measure only the records ECG-QA asks about")
    p.set_defaults(func=cmd_measure)

    p = data_sub.add_parser(
        "generate", formatter_class=formatter, help="generate ECG-QA-style or ECGInstruct-style conversations",
        description="Generate seeded, deterministic training data from labelled records of ONE split. By default "
                    "the pool is an ECG-QA split list (--pool ecgqa), so ECG-QA test ECGs are never used for "
                    "training data; --pool ptbxl uses PTB-XL strat_fold splits instead.",
        epilog=f"""examples:
  ecgllm data generate ecgqa --ptbxl shared/data/ptbxl --ecgqa shared/data/ecgqa/ecgqa --split train \\
      --n 100000 --out train_ecgqa.json                       # official ECG-QA JSON schema
  ecgllm data generate instruct --ptbxl shared/data/ptbxl --ecgqa shared/data/ecgqa/ecgqa --split train \\
      --measurements measurements.csv --n 50000 --out instruct.jsonl
  ecgllm data generate ecgqa ... --format llava --out llava.json   # LLaVA conversation format

{exit_help}""")
    p.add_argument("kind", choices=["ecgqa", "instruct"])
    p.add_argument("--ptbxl", required=True, help="folder with ptbxl_database.csv or ptbxl_labels.csv")
    p.add_argument("--ecgqa", help="ECG-QA release folder (ecgqa/ptbxl), needed for --pool ecgqa")
    p.add_argument("--pool", choices=["ecgqa", "ptbxl"], default="ecgqa", help="which split system")
    p.add_argument("--split", choices=["train", "valid", "test"], default="train")
    p.add_argument("--measurements", help="CSV from `ecgllm data measure` (numeric features, feature tasks) or of "
                                           "ECG-QA's own features (measure_ecgqa_records: rr_s ... axis_ecgqa_deg)")
    p.add_argument("--n", type=int, default=10000, help="number of samples (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["official", "jsonl", "llava"], default="official",
                   help="ecgqa: official JSON (default), conversation JSONL or LLaVA; instruct: jsonl or llava")
    p.add_argument("--fold", type=int, nargs="+", help="keep only records of these PTB-XL strat_folds "
                                                     "(e.g. --split test --fold 10: ECG-QA test ECGs of fold 10)")
    p.add_argument("--template-ids", type=int, nargs="+", help="only these ECG-QA templates")
    p.add_argument("--intervention", action="store_true",
                   help="ecgqa: de-biased sampling do(Q): severity stratum from P(s), then a record, then the "
                        "question independently of the record (backdoor adjustment by intervention)")
    p.add_argument("--paired", action="store_true",
                   help="ecgqa: counterfactual pairs: each question is asked, in the same words, of two ECGs whose "
                        "answers differ, so the wording alone predicts nothing (training data that forces reading "
                        "the ECG)")
    p.add_argument("--answer-groups", action="store_true",
                   help="ecgqa: draw choose and query questions after ECG-QA's own draw: the question first, then "
                        "one of its answers (weighted by min(its records, a per-answer quota: ECG-QA's, 5 records "
                        "of each answer of a choose question and 10 of a query one in --split train, 3 and 6 in "
                        "valid and test)), then a record, so that \"none\" is one answer among the others (by "
                        "default a record is drawn first, and most choose and query questions then answer \"none\")")
    p.add_argument("--answered-comparisons", action="store_true",
                   help="ecgqa: ask the numeric comparison queries (templates 68-70: which numeric features of the "
                        "second ECG became normal, became abnormal or are still abnormal) only of ECG pairs whose "
                        "answer names something, as ECG-QA's own questions almost always do (by default the pair is "
                        "drawn first and about a third answer \"none\")")
    p.add_argument("--paraphrase", type=float, default=0.0, metavar="SHARE",
                   help="ecgqa: share of questions (0-1) worded by an official paraphrase of their template "
                        "(train wordings) instead of the template wording (default 0: template wording only)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_generate)

    p = data_sub.add_parser(
        "convert", formatter_class=formatter, help="official ECG-QA files -> conversation JSONL",
        description="Turn official-format ECG-QA samples (files or folders) into training conversations.",
        epilog=f"""examples:
  ecgllm data convert shared/data/ecgqa/ecgqa/ptbxl/template/train --split train --n 2000 -o official_train.jsonl

{exit_help}""")
    p.add_argument("official", nargs="+", help="official-format files or folders")
    p.add_argument("--split", default="train", help="split name written into the conversations' meta")
    p.add_argument("--n", type=int, help="seeded random subsample of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(func=cmd_convert)

    p = data_sub.add_parser(
        "as-images", formatter_class=formatter, help="give a share of the conversations' ECGs as paper renders",
        description="Image instruction data: a seeded share of the conversations get, for each ECG, a render spec "
                    "(layout 3x4/6x2/12x1, print/photo distortions or not, seed); training and evaluation draw that "
                    "page from the record's signal when they load it, so answers stay those of the labels. Needs a "
                    "model with an image encoder (recipe key model.image_encoder_init).",
        epilog=f"""examples:
  ecgllm data as-images train.jsonl -o train_images.jsonl --share 0.5 --seed 1
  ecgllm data as-images valid.jsonl -o valid_photos.jsonl --share 1 --augment-share 1

{exit_help}""")
    p.add_argument("conversations", help="conversation JSONL (any builder's output)")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--share", type=float, default=1.0, help="share of conversations given as images (default 1)")
    p.add_argument("--augment-share", type=float, default=0.7,
                   help="share of those renders with print/photo distortions (default 0.7)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_as_images)

    p = data_sub.add_parser(
        "debias", formatter_class=formatter, help="annotate conversations with severity strata and IPW weights",
        description="Add each conversation's severity strata (from PTB-XL labels) and its inverse-propensity "
                    "weight P(s)/P(s|q) to its meta, for the ipw training estimator (debias: ipw). Prints how "
                    "well the question alone predicts the answer (the shortcut the method removes).",
        epilog=f"""examples:
  ecgllm data debias train.jsonl --ptbxl shared/data/ptbxl -o train_debiased.jsonl

{exit_help}""")
    p.add_argument("conversations", help="conversation JSONL")
    p.add_argument("--ptbxl", required=True, help="folder with ptbxl_database.csv or ptbxl_labels.csv")
    p.add_argument("-o", "--out", required=True, help="annotated JSONL")
    p.set_defaults(func=cmd_debias)

    p = data_sub.add_parser(
        "balance", formatter_class=formatter, help="equal yes and no answers for every verify question wording",
        description="Repeat the rarer answer of each yes/no verify question (ECG-QA meta.template_id, and within "
                    "it each exact wording) until yes and no are equally common (each conversation at most --max-repeats more times), so that a "
                    "question's wording says nothing about its answer. Nothing is dropped; other conversations are kept as they are.",
        epilog=f"""examples:
  ecgllm data balance train_mix.jsonl -o train_balanced.jsonl

{exit_help}""")
    p.add_argument("conversations", help="conversation JSONL")
    p.add_argument("-o", "--out", required=True, help="balanced JSONL")
    p.add_argument("--seed", type=int, default=0, help="which copies are repeated (default 0)")
    p.add_argument("--max-repeats", type=_non_negative_int, default=3,
                   help="copies added per conversation at most (default 3): a template whose rarer answer has "
                        "too few conversations stays partly unbalanced rather than learned by heart")
    p.set_defaults(func=cmd_balance)
