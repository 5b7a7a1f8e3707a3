"""Signal preparation: lead order, derived leads, resampling, filters, normalisation, windows."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from ecgllm import read_ecg
from ecgllm.io import STANDARD_12
from ecgllm.signal import (
    PrepConfig,
    bandpass,
    crop_or_pad,
    normalize,
    notch,
    prepare,
    remove_baseline,
    reorder_leads,
    resample,
    segment,
)
from tests.conftest import FIXTURES, PTBXL_1


def test_derived_limb_leads_match_recorded_ones(ptbxl_signal):
    """Einthoven/Goldberger: III, aVR, aVL, aVF computed from I and II equal the recorded leads."""
    x, _ = ptbxl_signal
    only_i_ii = x[:2]
    derived, mask = reorder_leads(only_i_ii, ["I", "II"])
    assert mask[:6].all() and not mask[6:].any()
    assert np.allclose(derived[2:6], x[2:6], atol=0.002)  # PTB-XL rounds to 1 µV per lead
    assert (derived[6:] == 0).all()


def test_reorder_aliases_and_masks_missing_leads():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out, mask = reorder_leads(x, ["V1", "MLII"], derive=False)
    assert mask.tolist() == [False, True] + [False] * 4 + [True] + [False] * 5
    assert out[1].tolist() == [3, 4, 5] and out[6].tolist() == [0, 1, 2]


def test_resample_preserves_a_sine_and_the_length():
    fs = 500.0
    t = np.arange(5000) / fs
    x = np.sin(2 * np.pi * 5 * t)[None].astype(np.float32)
    y = resample(x, fs, 100.0)
    assert y.shape == (1, 1000)
    assert np.allclose(y[0, 50:-50], np.sin(2 * np.pi * 5 * np.arange(1000) / 100)[50:-50], atol=0.01)
    assert resample(x, 360.0, 250.0).shape[1] == math.ceil(5000 * 250 / 360)  # resample_poly rounds up


def test_bandpass_removes_drift_and_keeps_qrs_band():
    fs = 250.0
    t = np.arange(2500) / fs
    drift = 2.0 + 0.5 * np.sin(2 * np.pi * 0.1 * t)
    beat_band = np.sin(2 * np.pi * 10 * t)
    y = bandpass((drift + beat_band)[None].astype(np.float32), fs)
    assert np.allclose(y[0, 250:-250], beat_band[250:-250], atol=0.05)
    y = remove_baseline((drift + beat_band)[None].astype(np.float32), fs, "median")
    assert abs(float(np.median(y))) < 0.1


def test_notch_removes_mains():
    fs = 500.0
    t = np.arange(5000) / fs
    x = (np.sin(2 * np.pi * 50 * t) + np.sin(2 * np.pi * 5 * t))[None].astype(np.float32)
    y = notch(x, fs, 50.0)
    assert np.allclose(y[0, 500:-500], np.sin(2 * np.pi * 5 * t)[500:-500], atol=0.05)


@pytest.mark.parametrize("mode", ["none", "zscore", "minmax"])
def test_normalisation_modes(ptbxl_signal, mode):
    x, _ = ptbxl_signal
    mask = np.ones(12, bool)
    mask[3] = False
    y = normalize(x, mode, mask)
    assert (y[3] == 0).all()
    if mode == "zscore":
        assert np.allclose(y[mask].mean(1), 0, atol=1e-4) and np.allclose(y[mask].std(1), 1, atol=1e-3)
    elif mode == "minmax":
        assert np.allclose(y[mask].min(1), -1) and np.allclose(y[mask].max(1), 1)
    else:
        assert np.allclose(y[mask], x[mask])


def test_crop_pad_segment():
    x = np.arange(20, dtype=np.float32).reshape(1, 20)
    assert crop_or_pad(x, 10, "start")[0, 0] == 0
    assert crop_or_pad(x, 10, "center")[0, 0] == 5
    assert crop_or_pad(x, 30).shape == (1, 30) and crop_or_pad(x, 30)[0, -1] == 0
    r = crop_or_pad(x, 10, "random", np.random.default_rng(0))
    assert r.shape == (1, 10) and r[0, 1] - r[0, 0] == 1
    assert np.array_equal(r, crop_or_pad(x, 10, "random", np.random.default_rng(0)))  # seeded: replayable
    with pytest.raises(ValueError, match="seeded rng"):
        crop_or_pad(x, 10, "random")
    windows = segment(x, 8, 8)
    assert windows.shape == (3, 1, 8) and windows[-1, 0, -1] == 19  # last window aligned to the end


def test_prepare_brings_any_recording_to_the_configured_form():
    config = PrepConfig(fs=100.0, window_s=10.0, normalize="zscore")
    for path in [PTBXL_1, FIXTURES / "dicom/waveform_ecg.dcm", FIXTURES / "code15/code_15_438277.mat",
                 FIXTURES / "mitdb/208.hea"]:
        p = prepare(read_ecg(path), config)
        assert p.signal.shape == (12, 1000) and p.signal.dtype == np.float32
        assert np.isfinite(p.signal).all()
    holter = prepare(read_ecg(FIXTURES / "mitdb/208.hea"), config)
    assert holter.mask.tolist() == [False, True] + [False] * 4 + [True] + [False] * 5


def test_prepare_masks_bad_leads(tmp_path, ptbxl_signal):
    x, fs = ptbxl_signal
    x[7] = 0.0
    np.save(tmp_path / "a.npy", x)
    with pytest.warns(UserWarning):
        ecg = read_ecg(tmp_path / "a.npy", fs=fs)
    assert not prepare(ecg).mask[7]


def test_prep_config_round_trip():
    config = PrepConfig(fs=250, leads=("I", "II"), bandpass=(1.0, 30.0), notch_hz=60, normalize="minmax")
    assert PrepConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        PrepConfig(normalize="l2")


def test_signal_layer_does_not_import_torch():
    code = "import sys, ecgllm.signal, ecgllm.io; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_standard_order():
    assert STANDARD_12[3:6] == ("aVR", "aVL", "aVF")
