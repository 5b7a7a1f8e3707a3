"""Bad input ends in a typed ECGReadError whose message names the file and what to do, never garbage."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from ecgllm import read_ecg
from ecgllm.io import (
    CorruptFileError,
    DurationError,
    ECGFileNotFoundError,
    ECGQualityWarning,
    ECGReadError,
    EmptyFileError,
    FileTooLargeError,
    HeaderError,
    InvalidSignalError,
    ReadLimits,
    SamplingRateError,
    STANDARD_12,
    TruncatedDataError,
    UnknownLeadError,
    UnsupportedFormatError,
)
from tests.conftest import FIXTURES, PTBXL_1


RECORD_STEM = PTBXL_1.with_suffix("")


def copy_record(tmp_path, stem=RECORD_STEM):
    for ext in (".hea", ".dat"):
        shutil.copyfile(stem.with_suffix(ext), tmp_path / (stem.name + ext))
    return tmp_path / (stem.name + ".hea")


def raises_named(exc_type, path, **kw):
    with pytest.raises(exc_type) as info:
        read_ecg(path, **kw)
    assert isinstance(info.value, ECGReadError)
    assert path.stem in str(info.value)  # the message names the file (or its companion)
    return str(info.value)


def test_missing_file(tmp_path):
    msg = raises_named(ECGFileNotFoundError, tmp_path / "nope.hea")
    assert "does not exist" in msg


def test_missing_dat_next_to_header(tmp_path):
    hea = copy_record(tmp_path)
    (tmp_path / "00001_lr.dat").unlink()
    with pytest.raises(ECGFileNotFoundError, match="00001_lr.dat"):
        read_ecg(hea)


@pytest.mark.parametrize("name", ["empty.hea", "empty.csv", "empty.npy", "empty.dcm", "empty.mat"])
def test_empty_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    raises_named(EmptyFileError, tmp_path / name)


def test_unreadable_header(tmp_path):
    path = tmp_path / "x.hea"
    path.write_text("this is not a header\n")
    raises_named(UnsupportedFormatError, path)


def test_header_announces_more_samples_than_the_data_holds(tmp_path):
    hea = copy_record(tmp_path)
    dat = tmp_path / "00001_lr.dat"
    dat.write_bytes(dat.read_bytes()[:5000])
    msg = raises_named(TruncatedDataError, hea)
    assert "1000" in msg


def test_inconsistent_header_lead_count(tmp_path):
    hea = copy_record(tmp_path)
    lines = hea.read_text().splitlines()
    lines[0] = lines[0].replace(" 12 ", " 13 ", 1)
    hea.write_text("\n".join(lines) + "\n")
    with pytest.raises((HeaderError, TruncatedDataError)):
        read_ecg(hea)


def test_nan_samples(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    x[3, 100:110] = np.nan
    np.save(tmp_path / "nan.npy", x)
    msg = raises_named(InvalidSignalError, tmp_path / "nan.npy", fs=fs)
    assert "aVR" in msg and "10 NaN/inf" in msg


def test_some_flat_or_saturated_leads_warn_with_names(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    x[6] = 0.0                                  # V1 electrode off
    x[8] = np.clip(x[8], -0.05, 0.05)          # V3 clipped
    np.save(tmp_path / "bad.npy", x)
    with pytest.warns(ECGQualityWarning, match=r"V1 \(flat-lined\).*V3 \(saturated\)"):
        ecg = read_ecg(tmp_path / "bad.npy", fs=fs)
    assert ecg.bad_leads == {"V1": "flat-lined", "V3": "saturated"}


def test_all_leads_flat_is_an_error(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((12, 5000), np.float32))
    msg = raises_named(InvalidSignalError, tmp_path / "flat.npy", fs=500)
    assert "no usable lead" in msg


def test_unknown_lead_names(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    names = list(STANDARD_12[:-1]) + ["PLETH"]
    msg = raises_named(UnknownLeadError, (np.save(tmp_path / "u.npy", x), tmp_path / "u.npy")[1], fs=fs, leads=names)
    assert "PLETH" in msg and "Known leads" in msg


def test_duplicate_lead_names(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    np.save(tmp_path / "d.npy", x[:2])
    raises_named(UnknownLeadError, tmp_path / "d.npy", fs=fs, leads=["II", "MLII"])


@pytest.mark.parametrize("fs", [10.0, 20_000.0])
def test_sampling_rate_out_of_range(tmp_path, ptbxl_signal, fs):
    x, _ = ptbxl_signal
    np.save(tmp_path / "r.npy", np.tile(x, 20))  # long enough for 2.5 s at 20 kHz
    msg = raises_named(SamplingRateError, tmp_path / "r.npy", fs=fs)
    assert "50–10000 Hz" in msg


def test_missing_sampling_rate(tmp_path, ptbxl_signal):
    x, _ = ptbxl_signal
    np.save(tmp_path / "nofs.npy", x)
    msg = raises_named(SamplingRateError, tmp_path / "nofs.npy")
    assert "fs=" in msg


def test_too_short(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    np.save(tmp_path / "short.npy", x[:, :200])
    msg = raises_named(DurationError, tmp_path / "short.npy", fs=fs)
    assert "2.00 s" in msg and "2.5 s" in msg


def test_configurable_duration_and_size_limits():
    with pytest.raises(DurationError, match="limit is 30 s"):
        read_ecg(FIXTURES / "mitdb/208.hea", limits=ReadLimits(max_duration_s=30))
    assert read_ecg(FIXTURES / "mitdb/208.hea", duration_s=20, limits=ReadLimits(max_duration_s=30)).duration_s == 20
    with pytest.raises(FileTooLargeError, match="MiB"):
        read_ecg(FIXTURES / "dicom/waveform_ecg.dcm", limits=ReadLimits(max_file_bytes=100_000))


def test_pickled_numpy_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    msg = raises_named(UnsupportedFormatError, path, fs=100)
    assert "pickle" in msg


def test_truncated_npy(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    np.save(tmp_path / "t.npy", x)
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    raises_named(HeaderError, tmp_path / "t.npy", fs=fs)


def test_ragged_and_non_numeric_csv(tmp_path):
    (tmp_path / "r.csv").write_text("I,II\n1,2\n3\n")
    assert "line 3" in raises_named(HeaderError, tmp_path / "r.csv", fs=100)
    (tmp_path / "n.csv").write_text("I,II\n1,2\n3,abc\n")
    assert "non-numeric" in raises_named(HeaderError, tmp_path / "n.csv", fs=100)


def test_truncated_dicom(tmp_path):
    data = (FIXTURES / "dicom/waveform_ecg.dcm").read_bytes()
    (tmp_path / "t.dcm").write_bytes(data[: len(data) // 3])
    with pytest.raises(ECGReadError):
        read_ecg(tmp_path / "t.dcm")


def test_unknown_mat_layout(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "x.mat", {"foo": np.zeros((3, 3))})
    assert "unknown layout" in raises_named(UnsupportedFormatError, tmp_path / "x.mat")


def test_folder_without_record_id_and_images(tmp_path):
    msg = raises_named(UnsupportedFormatError, FIXTURES / "ptbxl")
    assert "record_id" in msg
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)
    raises_named(CorruptFileError, tmp_path / "photo.jpg")  # images are read (test_render.py); broken ones are not


def test_binary_garbage_is_not_silently_read(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ECGReadError):
        read_ecg(path, fs=100)


def test_pickle_module_not_used_by_readers():
    """Guard against a reader falling back to pickle for unknown files (a remote-code risk)."""
    import ecgllm.io.formats.numpy_format as mod

    assert "allow_pickle=False" in open(mod.__file__).read()
    assert pickle  # the test above creates a real pickle to prove it is refused
