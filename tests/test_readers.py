"""Every supported format, read from real fixtures, gives the same kind of validated ECG."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import wfdb

from ecgllm import ECG, read_ecg
from ecgllm.io import STANDARD_12, canonical_lead, detect_format
from tests.conftest import FIXTURES, PTBXL_1, SHARED, needs_shared


def assert_valid(ecg: ECG, n_leads: int, fs: float) -> None:
    assert ecg.signal.dtype == np.float32
    assert ecg.signal.shape[0] == n_leads == len(ecg.leads)
    assert ecg.fs == fs
    assert np.isfinite(ecg.signal).all()
    # Real ECGs in mV: QRS amplitudes between ~0.1 and ~10 mV, never in µV or V scale.
    assert 0.1 < np.abs(ecg.signal).max() < 20


@pytest.mark.parametrize("path", [PTBXL_1, PTBXL_1.with_suffix(".dat"), PTBXL_1.with_suffix("")])
def test_wfdb_record_by_hea_dat_or_stem(path):
    ecg = read_ecg(path)
    assert_valid(ecg, 12, 100.0)
    assert ecg.leads == list(STANDARD_12)  # "AVR" in the header becomes canonical "aVR"
    assert ecg.n_samples == 1000


@pytest.mark.parametrize("record", ["ptbxl/records100/00000/00001_lr", "ptbxl/records500/00000/00001_hr",
                                    "mitdb/208", "cinc/00002_hrm"])
def test_fast_wfdb_path_matches_wfdb_library(record):
    """The NumPy fast path and wfdb.rdrecord decode the same samples."""
    from ecgllm.io.formats.wfdb_format import read_wfdb

    path = FIXTURES / record
    fast = read_wfdb(path)
    ref = wfdb.rdrecord(str(path))
    assert np.allclose(fast.signal, ref.p_signal.T, atol=1e-6)
    assert fast.fs == ref.fs
    slow = read_wfdb(path, force_wfdb=True)
    assert np.allclose(slow.signal, ref.p_signal.T, atol=1e-6)


def test_mitbih_format_212_two_lead_holter():
    ecg = read_ecg(FIXTURES / "mitdb/208.hea")
    assert_valid(ecg, 2, 360.0)
    assert ecg.leads == ["II", "V1"]  # MLII is the modified limb lead II
    window = read_ecg(FIXTURES / "mitdb/208.hea", start_s=10, duration_s=5)
    assert window.n_samples == 5 * 360
    assert np.allclose(window.signal, ecg.signal[:, 3600:5400])


def test_ptbxl_layout_by_id_prefers_500_and_falls_back_to_100():
    root = FIXTURES / "ptbxl"
    hr = read_ecg(root, record_id=1)
    assert hr.fs == 500.0
    lr = read_ecg(root, record_id=2)  # records500 has only ecg_id 1 here
    assert lr.fs == 100.0
    assert read_ecg(root, record_id=1, prefer_fs=100).fs == 100.0


def test_mimic_layout_by_study_id():
    ecg = read_ecg(FIXTURES / "mimic", record_id=40000001)
    assert_valid(ecg, 12, 500.0)


def test_mimic_layout_uses_record_list(tmp_path):
    shutil.copytree(FIXTURES / "mimic", tmp_path / "mimic")
    (tmp_path / "mimic/record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"
        "10000001,40000001,40000001,2180-01-01 00:00:00,files/p1000/p10000001/s40000001/40000001\n")
    assert read_ecg(tmp_path / "mimic", record_id=40000001).fs == 500.0


def test_cinc_mat_with_header_uses_gains_from_hea():
    ecg = read_ecg(FIXTURES / "cinc/00002_hrm.mat")
    ref = read_ecg(SHARED / "ptbxl/wfdb_sample/records500/00000/00002_hr") if SHARED.exists() else None
    assert_valid(ecg, 12, 500.0)
    if ref is not None:
        assert np.allclose(ecg.signal, ref.signal, atol=1e-6)


def test_cpsc2018_struct():
    ecg = read_ecg(FIXTURES / "cpsc2018/A1982.mat")
    assert_valid(ecg, 12, 500.0)
    assert ecg.meta["age"] == 89 and ecg.meta["sex"] == "M"


def test_code15_mat_export():
    ecg = read_ecg(FIXTURES / "code15/code_15_438277.mat")
    assert_valid(ecg, 12, 400.0)
    assert ecg.n_samples == 2934


def test_code15_official_hdf5_strips_zero_padding():
    path = FIXTURES / "code15/exams_sample.hdf5"
    ecg = read_ecg(path, exam_id=438277)
    assert ecg.n_samples == 2934 and ecg.meta["record_id"] == 438277
    mat = read_ecg(FIXTURES / "code15/code_15_438277.mat")
    assert np.allclose(ecg.signal, mat.signal, atol=1e-6)
    assert read_ecg(path, index=1).meta["record_id"] == 270272


def test_dicom_waveform_in_millivolts():
    ecg = read_ecg(FIXTURES / "dicom/waveform_ecg.dcm")
    assert_valid(ecg, 12, 1000.0)
    assert ecg.n_samples == 10_000  # the rhythm group, not the 1.2 s median beats
    assert ecg.leads == list(STANDARD_12)
    assert ecg.meta["sex"] == "F" and ecg.meta["age"] == 42


@pytest.mark.parametrize("transpose", [False, True])
def test_npy_either_orientation_with_hints(tmp_path, ptbxl_signal, transpose):
    x, fs = ptbxl_signal
    path = tmp_path / "ecg.npy"
    np.save(path, x.T if transpose else x)
    ecg = read_ecg(path, fs=fs, leads=list(STANDARD_12))
    assert np.allclose(ecg.signal, x)


def test_npz_carries_fs_leads_units(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    path = tmp_path / "ecg.npz"
    np.savez(path, signal=(x * 1000).astype(np.int32), fs=fs, leads=np.array(STANDARD_12), units="uV")
    ecg = read_ecg(path)
    assert ecg.fs == fs and np.allclose(ecg.signal, x, atol=1e-3)


def test_csv_with_time_column_infers_fs(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    t = np.arange(x.shape[1]) / fs
    header = "time," + ",".join(STANDARD_12)
    np.savetxt(tmp_path / "a.csv", np.column_stack([t, x.T]), delimiter=",", header=header, comments="", fmt="%.5f")
    ecg = read_ecg(tmp_path / "a.csv")
    assert ecg.fs == pytest.approx(fs) and np.allclose(ecg.signal, x, atol=1e-4)
    header = "ms;" + ";".join(["MLII", "V1"])
    np.savetxt(tmp_path / "b.csv", np.column_stack([t * 1000, x[[1, 6]].T]), delimiter=";", header=header,
               comments="", fmt="%.5f")
    ecg = read_ecg(tmp_path / "b.csv")
    assert ecg.leads == ["II", "V1"] and ecg.fs == pytest.approx(fs)


def test_csv_without_header_or_time_needs_fs(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    np.savetxt(tmp_path / "c.csv", x.T, delimiter=",", fmt="%.5f")
    ecg = read_ecg(tmp_path / "c.csv", fs=fs)
    assert ecg.leads == list(STANDARD_12) and ecg.meta["assumed_leads"]


def test_content_sniffing_without_extension(tmp_path):
    blob = tmp_path / "mystery"
    shutil.copyfile(FIXTURES / "dicom/waveform_ecg.dcm", blob)
    assert detect_format(blob) == "dicom"
    assert read_ecg(blob).fs == 1000.0


@pytest.mark.parametrize("name,expected", [("AVR", "aVR"), ("avl", "aVL"), ("MLII", "II"), ("Lead V1", "V1"),
                                           ("Lead I (Einthoven)", "I"), ("vx", "X"), ("DIII", "III"),
                                           ("pleth", None), ("", None)])
def test_lead_aliases(name, expected):
    assert canonical_lead(name) == expected


@needs_shared
def test_ptbdb_fifteen_channels_with_frank_leads():
    ecg = read_ecg(SHARED / "external/ptbdb/s0010_re.hea")
    assert ecg.leads[-3:] == ["X", "Y", "Z"] and ecg.fs == 1000.0
    assert ecg.meta["age"] == 81 and ecg.meta["sex"] == "F"
