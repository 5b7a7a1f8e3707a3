"""Check the ECG-QA generator against every official ECG-QA train/valid sample in ../shared/data/ecgqa.

    ECGLLM_CACHE=/work/cache python benchmarks/ecgqa_agreement.py [--ptbxl DIR] [--workers 1] [--extra FILE ...]

Samples: the official chunks ``ecgqa/ptbxl/{template,paraphrased}/{train,valid}/*.json.gz`` and the
``official_sample/{template,paraphrased}_{train,valid}.json`` files (both wordings of each question count).
For each sample the answer is regenerated from PTB-XL (labels, report text, metadata columns) and, for numeric
features and the heart axis, from ECG-QA's NeuroKit2 measurements of our 100 Hz records resampled to 500 Hz
(`ecgllm.datasets.ecgqa_numeric`; cached in ``$ECGLLM_CACHE/ecgqa_features_ptbxl100.csv``, default
``../cache``, outside the work tree). Answers are compared as sets, per template and per attribute type.
Bad input (unknown template, value or answer outside the template's list, ECG missing from PTB-XL) is
reported by sample id and skipped, never scored. ``--extra`` adds other official-format files to check.

Writes benchmarks/results/ecgqa_generator_agreement.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED, environment, ptbxl_wfdb_dir, write_result  # noqa: E402

from ecgllm.datasets import PTBXL  # noqa: E402
from ecgllm.datasets.ecgqa import read_qa_file  # noqa: E402
from ecgllm.datasets.ecgqa_attributes import FEATURES, build_attributes  # noqa: E402
from ecgllm.datasets.ecgqa_check import generator_agreement, numeric_feature_agreement, official_samples  # noqa: E402
from ecgllm.datasets.ecgqa_attributes import load_ecgqa_ranges  # noqa: E402
from ecgllm.datasets.measurements import measure_ecgqa_records  # noqa: E402

TARGETS = {"scp_code": 0.97, "noise": 0.95, "heart_axis": 0.95, "stage_of_infarction": 0.95, "extra_systole": 0.95,
           "numeric_feature": 0.80}
FEATURE_CACHE = "ecgqa_features_ptbxl100.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ptbxl", help="PTB-XL root with records100/ (default: unpack the shared pack once)")
    parser.add_argument("--workers", type=int, default=1, help="processes measuring signals (default 1)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("ECGLLM_CACHE", ROOT.parent / "cache")),
                        help="folder of the measurement cache (default $ECGLLM_CACHE or ../cache)")
    parser.add_argument("--extra", nargs="*", type=Path, default=[], help="more official-format files to check")
    args = parser.parse_args()
    root = ptbxl_wfdb_dir(args.ptbxl)
    ptbxl = PTBXL.load(SHARED / "ptbxl", records_root=root)
    samples = official_samples(SHARED / "ecgqa")
    for path in args.extra:
        samples += read_qa_file(path, "extra", path.stem)
    known = set(int(i) for i in ptbxl.ecg_ids)
    measure_ids = {e for s in samples if s.attribute_type in ("numeric_feature", "heart_axis")
                   for e in s.ecg_id if e in known}
    axis_ids = {e for s in samples if s.attribute_type == "heart_axis" for e in s.ecg_id}
    measurements = measure_ecgqa_records({i: ptbxl.record_path(i, prefer_fs=100) for i in measure_ids},
                                         cache=args.cache / FEATURE_CACHE, workers=args.workers, axis_ids=axis_ids)
    ranges = load_ecgqa_ranges()
    attributes = build_attributes(ptbxl, measurements, ranges)
    result = generator_agreement(samples, attributes)
    per_variant = {v: {k: x for k, x in generator_agreement([s for s in samples if s.variant == v], attributes).items()
                       if k in TARGETS} for v in ("template", "paraphrased")}
    result["numeric_feature_per_feature"] = numeric_feature_agreement(samples, attributes)
    # the QTc upper bound: ECG-QA's code (0.555 s) against the bound the comparison answers need (0.45 s)
    code_bound = dict(ranges, **{"qt corrected": (330.0, 430.0 / math.sqrt(0.6))})
    code_attrs = build_attributes(ptbxl, measurements, code_bound)
    numeric = [s for s in samples if s.attribute_type == "numeric_feature"]
    result["numeric_feature_qtc_code_bound_555ms"] = {
        "numeric_feature": generator_agreement(numeric, code_attrs)["numeric_feature"],
        "qt corrected": numeric_feature_agreement(numeric, code_attrs)["qt corrected"]}
    result["targets"] = {k: {"target": v, "agreement": result.get(k, {}).get("agreement"),
                             "met": (result.get(k, {}).get("agreement") or 0) >= v} for k, v in TARGETS.items()}
    result["per_variant"] = per_variant
    result["samples_checked"] = len(samples)
    result["records_measured"] = {"requested": len(measure_ids),
                                  "lead_ii_features": int(measurements["rr_s"].notna().sum()),
                                  "heart_axis_requested": len(axis_ids & measure_ids),
                                  "heart_axis": int(measurements.loc[measurements.index.isin(axis_ids),
                                                                     "axis_ecgqa_deg"].notna().sum())}
    result["normal_ranges_ms"] = {f: [None if abs(x) == math.inf else round(x, 1) for x in ranges[f]] for f in FEATURES}
    result["notes"] = (
        "Rules: ECG-QA's own (presence at any likelihood; certain = likelihood 0 or 100; letters-only superclasses; "
        "11 codes never asked; lead statements parsed from the report, German wording translated by a phrase "
        "table; noise present when a lead is named; ECG-QA's extra-systole and stage readings). Heart axis and "
        "numeric features: NeuroKit2 DWT on our 100 Hz records resampled to 500 Hz (ECG-QA used the 500 Hz "
        "records), lead II median over beats, dropped when lead II (axis: I or aVF) is noisy or has extra beats.")
    write_result("ecgqa_generator_agreement.json", {**result, "command": "ECGLLM_CACHE=/work/cache python "
                                                    "benchmarks/ecgqa_agreement.py", **environment()})


if __name__ == "__main__":
    main()
