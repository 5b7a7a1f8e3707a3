"""Rebuild tests/fixtures/ from the real data in ../shared/data (run once; the outputs are committed).

Every fixture is real ECG data: byte copies of small records, truncated copies of long ones, and real
CODE-15% / PTB-XL samples re-packaged into official layouts (CODE-15% HDF5, PhysioNet/CinC .mat+.hea,
MIMIC-IV-ECG folders) that ../shared does not ship.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import scipy.io
import wfdb
import wfdb.io.convert

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "tests" / "fixtures"


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def main() -> None:
    if not SHARED.exists():
        sys.exit(f"{SHARED} not found")
    sample = SHARED / "ptbxl" / "wfdb_sample"
    # PTB-XL official layout: two records at 100 Hz, one at 500 Hz, their database rows.
    for rid in (1, 2):
        for ext in (".hea", ".dat"):
            copy(sample / f"records100/00000/{rid:05d}_lr{ext}", OUT / f"ptbxl/records100/00000/{rid:05d}_lr{ext}")
    for ext in (".hea", ".dat"):
        copy(sample / f"records500/00000/00001_hr{ext}", OUT / f"ptbxl/records500/00000/00001_hr{ext}")
    lines = (sample / "ptbxl_database.csv").read_text().splitlines()
    (OUT / "ptbxl/ptbxl_database.csv").write_text("\n".join(lines[:3]) + "\n")

    # MIT-BIH 208 (PVCs), first 60 s, still format 212, with its reference beat annotations.
    rec = wfdb.rdrecord(str(SHARED / "external/mitdb/208"), sampto=60 * 360, physical=False)
    ann = wfdb.rdann(str(SHARED / "external/mitdb/208"), "atr", sampto=60 * 360)
    mit = OUT / "mitdb"
    mit.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp("208", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, comments=rec.comments,
                write_dir=str(mit))
    wfdb.wrann("208", "atr", ann.sample, ann.symbol, write_dir=str(mit))

    copy(SHARED / "external/cpsc2018/A1982.mat", OUT / "cpsc2018/A1982.mat")          # 1st-degree AV block
    copy(SHARED / "external/code15/code_15_438277.mat", OUT / "code15/code_15_438277.mat")  # 1dAVb
    copy(SHARED / "external/dicom/waveform_ecg.dcm", OUT / "dicom/waveform_ecg.dcm")

    # CODE-15% official HDF5 layout from two real exams: tracings [n, 4096, 12], zero padding centred.
    exams = ["code_15_438277", "code_15_270272"]
    tracings = np.zeros((len(exams), 4096, 12), dtype=np.float32)
    ids = []
    for i, name in enumerate(exams):
        feats = scipy.io.loadmat(SHARED / f"external/code15/{name}.mat")["feats"].astype(np.float32)
        start = (4096 - feats.shape[1]) // 2
        tracings[i, start:start + feats.shape[1]] = feats.T
        ids.append(int(name.rsplit("_", 1)[1]))
    with h5py.File(OUT / "code15/exams_sample.hdf5", "w") as fh:
        fh.create_dataset("tracings", data=tracings, compression="gzip")
        fh.create_dataset("exam_id", data=np.asarray(ids, dtype=np.int64))

    # PhysioNet/CinC layout (Georgia, Chapman, CinC 2020): .mat ('val', int16) + .hea in format 16+24.
    cinc = OUT / "cinc"
    cinc.mkdir(parents=True, exist_ok=True)
    wfdb.io.convert.wfdb_to_mat(str(sample / "records500/00000/00002_hr"), pn_dir=None, sampfrom=0, sampto=None,
                                channels=None)
    for produced in Path.cwd().glob("00002_hrm.*"):
        shutil.move(str(produced), cinc / produced.name)
    hea = cinc / "00002_hrm.hea"
    hea.write_text("".join(ln if not ln.startswith("#Source") else "#Source: PTB-XL records500/00000/00002_hr\n"
                           for ln in hea.read_text().splitlines(keepends=True)))

    # MIMIC-IV-ECG layout: files/p1000/p10000001/s40000001/40000001.{hea,dat} from a real PTB-XL record.
    rec = wfdb.rdrecord(str(sample / "records500/00000/00003_hr"), physical=False)
    study = OUT / "mimic/files/p1000/p10000001/s40000001"
    study.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp("40000001", fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
                fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(study))
    # PTB-XL metadata: the official statements table, and the label-only layout of the shared copy
    # (first 120 records of ptbxl_labels.csv with their rows of ptbxl_database_partial.csv).
    copy(SHARED / "ptbxl/scp_statements.csv", OUT / "ptbxl/scp_statements.csv")
    labels_dir = OUT / "ptbxl_labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    copy(SHARED / "ptbxl/scp_statements.csv", labels_dir / "scp_statements.csv")
    labels = (SHARED / "ptbxl/ptbxl_labels.csv").read_text().splitlines()
    (labels_dir / "ptbxl_labels.csv").write_text("\n".join(labels[:121]) + "\n")
    import pandas as pd

    partial = pd.read_csv(SHARED / "ptbxl/ptbxl_database_partial.csv")
    partial[partial.ecg_id <= 60].to_csv(labels_dir / "ptbxl_database_partial.csv", index=False)

    # ECG-QA official layout: vocabularies and split lists whole, 40 samples of each shipped chunk.
    qa_src, qa_dst = SHARED / "ecgqa/ecgqa/ptbxl", OUT / "ecgqa/ptbxl"
    for name in ("answers.csv", "answers_for_each_template.csv", "train_ecgs.tsv", "valid_ecgs.tsv",
                 "test_ecgs.tsv"):
        copy(qa_src / name, qa_dst / name)
    import gzip
    import json

    for chunk in ("template/train/120000", "template/train/260000", "paraphrased/valid/60000",
                  "template/valid/60000"):
        data = json.load(gzip.open(qa_src / f"{chunk}.json.gz", "rt"))[:40]
        target = qa_dst / f"{chunk}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data))
    print("fixtures written to", OUT)


if __name__ == "__main__":
    main()
