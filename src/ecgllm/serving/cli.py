"""The `ecgllm` command line.

Exit codes: 0 success, 2 bad command-line usage, 3 the input file cannot be read as an ECG,
4 the output could not be written, 1 an unexpected internal error (run with --debug for the traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ecgllm import __version__
from ecgllm.errors import InputError
from ecgllm.io import ECG, ECGQualityWarning, read_ecg
from ecgllm.serving.exit_codes import (
    EXIT_CODES_HELP, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE,
)

BUNDLED = Path(__file__).resolve().parents[1] / "data"


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def bundled_example() -> Path:
    """Path of the real PTB-XL record shipped inside the package (ecg_id 1, 100 Hz)."""
    return BUNDLED / "ptbxl_00001_lr.hea"


def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="ECG file: WFDB .hea/.dat (or record path), .npy/.npz, .csv, .dcm, .mat, "
                                ".h5; or a PTB-XL / MIMIC-IV-ECG folder with --record-id")
    g = p.add_argument_group("reading hints (only needed when the file does not say)")
    g.add_argument("--fs", type=float, help="sampling rate in Hz (NumPy/CSV without a time column)")
    g.add_argument("--leads", help="comma-separated lead names, one per channel, e.g. I,II,V1")
    g.add_argument("--units", default="mV", help="amplitude units of NumPy/CSV data: mV (default), uV, V")
    g.add_argument("--record-id", type=int, help="PTB-XL ecg_id or MIMIC-IV-ECG study_id inside a dataset folder")
    g.add_argument("--exam-id", type=int, help="exam of a CODE-15%% HDF5 file")
    g.add_argument("--format", choices=["wfdb", "numpy", "csv", "dicom", "mat", "hdf5"],
                   help="force a reader instead of auto-detection")
    g.add_argument("--start", type=float, default=0.0, help="start of the window to read, in seconds")
    g.add_argument("--duration", type=float, help="length of the window to read, in seconds")


class ImageNotSignalError(InputError):
    """A command that needs the signal was given a picture of an ECG."""


def _read(args: argparse.Namespace) -> ECG:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ECGQualityWarning)  # surfaced through meta["warnings"] instead
        ecg = read_ecg(
            args.file, fs=args.fs, leads=args.leads.split(",") if args.leads else None, units=args.units,
            record_id=args.record_id, exam_id=args.exam_id, format=args.format, start_s=args.start,
            duration_s=args.duration)
    if not isinstance(ecg, ECG):
        raise ImageNotSignalError(f"{args.file}: is an image of an ECG; `ecgllm {args.command}` needs the signal "
                                  f"(WFDB, DICOM, CSV, ...). Ask about an image with `ecgllm ask IMAGE \"...\"`.")
    return ecg


def _fmt(value: float | None, unit: str, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}"


def _info_dict(ecg: ECG, measure: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "file": ecg.meta.get("source"), "format": ecg.meta.get("format"), "fs": ecg.fs,
        "leads": ecg.leads, "n_samples": ecg.n_samples, "duration_s": round(ecg.duration_s, 3),
        "age": _plain(ecg.meta.get("age")), "sex": _plain(ecg.meta.get("sex")),
        "bad_leads": ecg.bad_leads, "warnings": list(ecg.meta.get("warnings", [])),
    }
    if measure:
        from ecgllm.signal import measure as run_measure

        m = run_measure(ecg).to_dict()
        info["warnings"] += m.pop("warnings")
        info["measurement_warnings"] = [w for w in info["warnings"] if w not in ecg.meta.get("warnings", [])]
        info.update(m)
    return info


def _plain(value: Any) -> Any:
    """NumPy scalars and strings from file metadata, as JSON-friendly Python values."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return value if isinstance(value, (int, float)) else str(value)


def _print_info(info: dict[str, Any]) -> None:
    rows = [
        ("File", info["file"]), ("Format", info["format"]),
        ("Leads", f"{len(info['leads'])}: {', '.join(info['leads'])}"),
        ("Sampling", f"{info['fs']:g} Hz, {info['n_samples']} samples, {info['duration_s']:.2f} s"),
    ]
    if info.get("age") is not None or info.get("sex") is not None:
        rows.append(("Patient", f"age {info.get('age', 'n/a')}, sex {info.get('sex', 'n/a')}"))
    if "heart_rate" in info:
        rows += [
            ("Heart rate", f"{_fmt(info['heart_rate'], 'bpm')} (RR {_fmt(info['rr_ms'], 'ms')}, "
                           f"{info['n_beats']} beats on lead {info['rhythm_lead']})"),
            ("P / PR / QRS / QT", f"{_fmt(info['p_ms'], 'ms')} / {_fmt(info['pr_ms'], 'ms')} / "
                                  f"{_fmt(info['qrs_ms'], 'ms')} / {_fmt(info['qt_ms'], 'ms')}"),
            ("QTc", f"{_fmt(info['qtc_bazett_ms'], 'ms')} (Bazett), "
                    f"{_fmt(info['qtc_fridericia_ms'], 'ms')} (Fridericia)"),
            ("QRS axis", "n/a" if info["axis_deg"] is None else f"{info['axis_deg']:.0f}° ({info['axis_category']})"),
            ("Quality", "n/a" if info["quality"] is None else f"{info['quality_label']} (score {info['quality']:.2f})"),
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if info["warnings"]:
        print("Warnings:")
        for w in info["warnings"]:
            print(f"  - {w}")


def cmd_info(args: argparse.Namespace) -> int:
    ecg = _read(args)
    info = _info_dict(ecg, measure=not args.no_measure)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        _print_info(info)
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from ecgllm.render import plot_ecg

    ecg = _read(args)
    heart_rate = None
    if not args.no_measure:
        from ecgllm.signal import measure

        heart_rate = measure(ecg, beat_similarity=False).heart_rate
    try:
        out = plot_ecg(ecg, args.output, seconds=args.seconds, heart_rate=heart_rate, dpi=args.dpi)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    print(f"wrote {out} ({ecg.n_leads} leads, {min(args.seconds, ecg.duration_s):.1f} s)")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from ecgllm.render import render_ecg

    ecg = _read(args)
    measurements = None
    if args.header and not args.no_measure:
        from ecgllm.signal import measure

        measurements = measure(ecg).to_dict()
    try:
        rendered = render_ecg(ecg, args.layout, dpi=args.dpi, augment=args.augment, seed=args.seed,
                              header=args.header, measurements=measurements)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        rendered.image.save(out, **({"quality": 90} if out.suffix.lower() in (".jpg", ".jpeg") else {}))
    except (OSError, ValueError) as exc:
        print(f"error: cannot write {out}: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    done = ", ".join(f"{k}={v}" for k, v in rendered.augmentations.items()) or "none"
    print(f"wrote {out} ({rendered.image.size[0]}x{rendered.image.size[1]}, layout {args.layout}"
          + (f", seed {args.seed}, distortions: {done}" if args.augment else "") + ")")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    example = bundled_example()
    parser = argparse.ArgumentParser(
        prog="ecgllm", formatter_class=_Formatter,
        description="ecgllm: read electrocardiograms (signals or photos of printouts), measure and draw them, and ask "
                    "a language model about one or two of them.",
        epilog=f"""examples:
  ecgllm info {example}
  ecgllm info record.hea --json
  ecgllm plot record.hea -o ecg.png
  ecgllm render record.hea -o paper.png --augment --seed 1
  ecgllm data prepare ptbxl --source ptb-xl/ --out cache/ptbxl100

{EXIT_CODES_HELP}""")
    parser.add_argument("--version", action="version", version=f"ecgllm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", formatter_class=_Formatter, help="print leads, rate, duration, measurements, warnings",
                       description="Read one ECG and print its leads, sampling rate, duration, the measurements "
                                   "(heart rate, PR, QRS, QT, QTc, frontal axis, quality) and any warnings.",
                       epilog=f"""examples:
  ecgllm info {example}
  ecgllm info ptbxl/ --record-id 1 --json     # by id inside a PTB-XL folder
  ecgllm info exam.csv --fs 500               # CSV without a time column
  ecgllm info holter/208.hea --start 60 --duration 10

{EXIT_CODES_HELP}""")
    _add_read_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-measure", action="store_true", help="skip measurements (faster)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plot", formatter_class=_Formatter, help="draw a multi-lead plot (25 mm/s, 10 mm/mV) to PNG",
                       description="Draw every lead on a millimetre grid at clinical proportions "
                                   "(25 mm/s, 10 mm/mV) with lead labels and mV / seconds axes.",
                       epilog=f"""examples:
  ecgllm plot {example} -o ecg.png
  ecgllm plot holter/208.hea --start 120 --seconds 8 -o strip.png
  ecgllm plot record.hea -o ecg.pdf            # vector output by suffix

{EXIT_CODES_HELP}""")
    _add_read_options(p)
    p.add_argument("-o", "--output", required=True, help="output image (.png, .pdf or .svg)")
    p.add_argument("--seconds", type=float, default=10.0, help="how many seconds to draw (default 10)")
    p.add_argument("--dpi", type=int, default=100, help="resolution of PNG output (default 100)")
    p.add_argument("--no-measure", action="store_true", help="do not measure the heart rate for the title")
    p.set_defaults(func=cmd_plot)

    from ecgllm.render import LAYOUTS, augmentation_table

    p = sub.add_parser("render", formatter_class=_Formatter, help="draw a printed-style 12-lead ECG (PNG/JPEG)",
                       description="Draw the record as an ECG machine prints it: a clinical layout at 25 mm/s and "
                                   "10 mm/mV on a millimetre grid, a 1 mV calibration pulse per row, lead labels and "
                                   "a header (id, age, sex, rate, intervals). --augment adds seeded distortions that "
                                   "make it look printed and photographed (same seed, same image):\n\n"
                                   + augmentation_table(),
                       epilog=f"""layouts:
  3x4    I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6, 2.5 s each, plus a 10 s lead II rhythm strip
  6x2    I-aVF left, V1-V6 right, 5 s each
  12x1   every lead for 10 s

examples:
  ecgllm render {example} -o ecg.png
  ecgllm render record.hea -o photo.jpg --layout 6x2 --augment --seed 7
  ecgllm render record.hea -o print.png --dpi 200 --no-header

{EXIT_CODES_HELP}""")
    _add_read_options(p)
    p.add_argument("-o", "--output", required=True, help="output image (.png or .jpg)")
    p.add_argument("--layout", choices=sorted(LAYOUTS), default="3x4", help="page layout (default 3x4)")
    p.add_argument("--dpi", type=float, default=100.0, help="resolution; 100 gives 1100x850 (default)")
    p.add_argument("--augment", action="store_true", help="apply seeded print/photo distortions (see above)")
    p.add_argument("--seed", type=int, default=0, help="seed of the distortions (default 0)")
    p.add_argument("--no-header", dest="header", action="store_false", help="leave out the header lines")
    p.add_argument("--no-measure", action="store_true", help="do not measure rate and intervals for the header")
    p.set_defaults(func=cmd_render)

    from ecgllm.serving.cli_data import add_data_commands

    add_data_commands(sub, _Formatter, EXIT_CODES_HELP)
    from ecgllm.serving.cli_ask import add_ask_commands
    from ecgllm.serving.cli_eval import add_eval_commands

    add_ask_commands(sub, _Formatter, EXIT_CODES_HELP)

    add_eval_commands(sub, _Formatter, EXIT_CODES_HELP)

    p = sub.add_parser("train", formatter_class=_Formatter, help="run a training recipe (YAML)",
                       description="Run one training stage from a YAML recipe. The recipe's `stage` picks it: "
                                   "encoder_pretraining, encoder_contrastive and image_distillation train whole "
                                   "epochs (checkpoint after each); alignment, pretraining and instruction stages of "
                                   "the language model train steps (checkpoint every save_every). Every stage runs on "
                                   "HF Accelerate with atomic checkpoints, and re-running the same command resumes "
                                   "to the same weights as an uninterrupted run. A CUDA GPU is used when PyTorch sees one (`device: cpu` in "
                                   "an encoder recipe forbids it); `mixed_precision: bf16` autocasts. Several "
                                   "processes or GPUs: `accelerate launch -m ecgllm.serving.cli train RECIPE` or "
                                   "torchrun.",
                       epilog=f"""examples:
  ecgllm train recipes/encoder_ptbxl.yaml          # PTB-XL encoder, fold-10 macro AUC at the end
  ecgllm train recipes/instruct_tiny.yaml
  torchrun --standalone --nproc_per_node 2 -m ecgllm.serving.cli train recipes/instruct_tiny.yaml
  torchrun --standalone --nproc_per_node 2 -m ecgllm.serving.cli train recipes/encoder_ptbxl.yaml
  ecgllm train recipes/ecgqa/paired_more.yaml --export-step 300   # checkpoint 300 -> a --model folder
  ecgllm train recipes/instruct_tiny.yaml --optim.lr 1e-4 --optim.max_steps 50 --output_dir runs/try

Any recipe key can be overridden as --SECTION.KEY VALUE (values read as YAML: numbers, lists, null); the run
saves the resolved recipe as OUTPUT_DIR/recipe.json. A run resumes only under the recipe it started with:
otherwise it stops and lists the changed keys (--resume-anyway continues regardless).

{EXIT_CODES_HELP}""")
    p.add_argument("recipe", help="YAML recipe (see recipes/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume-anyway", action="store_true",
                   help="resume a run even though its recipe changed since it started")
    p.add_argument("--export-step", type=int, metavar="N",
                   help="train nothing: turn the run's checkpoint of step N into a model folder, OUTPUT_DIR/step-N/, "
                        "that --model reads (language-model stages), e.g. to choose a checkpoint on ECG-QA valid")
    p.set_defaults(func=cmd_train, overrides=[])
    return parser


def recipe_overrides(extra: list[str]) -> list[str]:
    """``--optim.lr 1e-4 --seed=3`` (arguments argparse did not know) as ``["optim.lr=1e-4", "seed=3"]``."""
    from ecgllm.errors import RecipeError

    out, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) < 3:
            raise RecipeError(f"unexpected argument {token!r}: recipe overrides are --KEY VALUE or --KEY=VALUE")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                raise RecipeError(f"override --{key} has no value")
            value, i = extra[i + 1], i + 1
        out.append(f"{key}={value}")
        i += 1
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ecgllm.errors import RecipeError
    from ecgllm.training.config import load_encoder_recipe, load_recipe
    from ecgllm.training.recipes import recipe_stage

    stage = recipe_stage(args.recipe)
    if args.export_step is not None and stage in ("encoder_contrastive", "image_distillation", "encoder_pretraining"):
        raise RecipeError(f"{args.recipe}: --export-step is for language-model stages; a {stage} run's folder "
                          f"is already what the next stage reads")
    if stage == "encoder_contrastive":
        from ecgllm.training.contrastive import pretrain_contrastive

        config = load_encoder_recipe(args.recipe, args.overrides)
        result = pretrain_contrastive(config, progress=not args.quiet, resume_anyway=args.resume_anyway)
        print(f"contrastive pretraining done: valid loss {result['history'][-1]['valid_loss']:.4f}; "
              f"encoder in {config.output_dir}")
        return EXIT_OK
    if stage == "image_distillation":
        from ecgllm.training.distill_image import distill_image_encoder

        config = load_encoder_recipe(args.recipe, args.overrides)
        result = distill_image_encoder(config, progress=not args.quiet, resume_anyway=args.resume_anyway)
        print(f"fold-10 superclass macro AUC: images {result['image_clean_super_macro_auc']:.4f} clean, "
              f"{result['image_augmented_super_macro_auc']:.4f} distorted; signals {result['signal_super_macro_auc']:.4f}; "
              f"image encoder in {config.output_dir}")
        return EXIT_OK
    if stage == "encoder_pretraining":
        from ecgllm.training.pretrain_encoder import pretrain_encoder

        result = pretrain_encoder(load_encoder_recipe(args.recipe, args.overrides), progress=not args.quiet,
                                  resume_anyway=args.resume_anyway)
        print(f"fold-10 macro AUC: superclasses {result['super_macro_auc']:.4f}, "
              f"71 statements {result['all71_macro_auc']:.4f}; {result['epoch_s']:.0f} s/epoch")
        return EXIT_OK
    from ecgllm.training.llm_stage import export_checkpoint, train

    if args.export_step is not None:
        print(f"wrote {export_checkpoint(load_recipe(args.recipe, args.overrides), args.export_step)}")
        return EXIT_OK
    final = train(load_recipe(args.recipe, args.overrides), progress=not args.quiet, resume_anyway=args.resume_anyway)
    print(f"wrote {final}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is not cmd_train:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        if extra:
            args.overrides = recipe_overrides(extra)
        return int(args.func(args))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: a message, not a traceback, unless asked for
        if args.debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
