"""Measurements against real references: beat annotations, known AV blocks, formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import wfdb

from ecgllm import read_ecg
from ecgllm.signal import axis_category, measure
from tests.conftest import FIXTURES, PTBXL_1

BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


def test_heart_rate_matches_mitbih_beat_annotations():
    path = FIXTURES / "mitdb/208"
    ann = wfdb.rdann(str(path), "atr")
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym in BEAT_SYMBOLS])
    for start in (0, 20, 40):
        ecg = read_ecg(path.with_suffix(".hea"), start_s=start, duration_s=20)
        inside = beats[(beats >= start * 360) & (beats < (start + 20) * 360)]
        reference = 60.0 / np.median(np.diff(inside) / 360.0)
        m = measure(ecg)
        assert m.heart_rate == pytest.approx(reference, rel=0.05)


def test_normal_ptbxl_record_has_normal_values():
    m = measure(read_ecg(PTBXL_1))
    assert 55 < m.heart_rate < 75
    assert 100 <= m.pr_ms <= 200 and 50 <= m.qrs_ms <= 120 and 350 <= m.qt_ms <= 450
    assert m.axis_category == "normal" and m.quality_label == "Excellent"
    assert set(m.amplitudes) == {"I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"}
    assert m.amplitudes["aVR"].qrs_net_mv < 0 < m.amplitudes["II"].qrs_net_mv  # aVR is inverted in sinus rhythm


@pytest.mark.parametrize("path", ["cpsc2018/A1982.mat", "code15/code_15_438277.mat"])
def test_first_degree_av_block_has_long_pr(path):
    """Both records are labelled 1st-degree AV block by their datasets: PR > 200 ms."""
    assert measure(read_ecg(FIXTURES / path)).pr_ms > 200


def test_qtc_formulas():
    m = measure(read_ecg(PTBXL_1))
    rr = m.rr_ms / 1000
    assert m.qtc_bazett_ms == pytest.approx(m.qt_ms / math.sqrt(rr))
    assert m.qtc_fridericia_ms == pytest.approx(m.qt_ms / rr ** (1 / 3))


@pytest.mark.parametrize("deg,cat", [(0, "normal"), (-30, "normal"), (90, "normal"), (-31, "left"), (-90, "left"),
                                     (91, "right"), (180, "right"), (-91, "extreme"), (-179, "extreme")])
def test_axis_categories(deg, cat):
    assert axis_category(deg) == cat


def test_axis_from_two_limb_leads_only():
    """A Holter-style I + II pair still gives an axis (aVF derived), equal to the 12-lead one."""
    full = read_ecg(PTBXL_1)
    from ecgllm.io.record import ECG

    pair = ECG(full.signal[:2], full.fs, ["I", "II"], {})
    assert measure(pair).axis_deg == pytest.approx(measure(full).axis_deg, abs=5)


def test_unmeasurable_signal_reports_why(tmp_path):
    from ecgllm.io.record import ECG

    noise = np.random.default_rng(0).normal(0, 0.01, (1, 1000)).astype(np.float32)
    m = measure(ECG(noise, 100.0, ["II"], {}))
    assert m.heart_rate is None or m.warnings
    assert isinstance(m.to_dict()["warnings"], list)
