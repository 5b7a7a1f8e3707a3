"""`ecgllm data ...`: download datasets and build training caches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT = 0, 2, 3, 4


def cmd_prepare(args: argparse.Namespace) -> int:
    from ecgllm.datasets.cache import build_cache
    from ecgllm.datasets.ptbxl import DatasetError, PTBXL
    from ecgllm.io.formats.wfdb_format import ptbxl_record_path
    from ecgllm.io.errors import ECGFileNotFoundError
    from ecgllm.signal import PrepConfig

    source = Path(args.source)
    try:
        ptbxl = PTBXL.load(args.metadata or source, records_root=source)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
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
    from ecgllm.datasets.download import DownloadError, download_ptbxl

    try:
        report = download_ptbxl(args.out, base_url=args.url, fs=args.fs, workers=args.workers,
                                progress=not args.quiet)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{args.out}: {report.downloaded} files downloaded ({report.resumed} resumed), "
          f"{report.skipped} already present and verified, {report.bytes / 2**20:.1f} MiB")
    return EXIT_OK


def add_data_commands(sub: argparse._SubParsersAction, formatter: type, exit_help: str) -> None:
    data = sub.add_parser("data", help="download datasets and build training caches",
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
    p.add_argument("dataset", choices=["ptbxl"])
    p.add_argument("--source", required=True, help="dataset root with records100/ and/or records500/")
    p.add_argument("--metadata", help="folder with ptbxl_database.csv or ptbxl_labels.csv (default: --source)")
    p.add_argument("--out", required=True, help="cache folder to create (must not exist)")
    p.add_argument("--fs", type=int, default=100, choices=[100, 500], help="sampling rate of the cache")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
