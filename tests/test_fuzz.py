"""Every reader survives corrupted input: a valid ECG or a typed ECGReadError, never a crash or a hang.
(``benchmarks/fuzz_readers.py`` runs 10,000 inputs per format; here a few hundred, set by
ECGLLM_FUZZ_EXAMPLES.)"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_readers import fuzz_case, seeds

EXAMPLES = int(os.environ.get("ECGLLM_FUZZ_EXAMPLES", "150"))
FORMATS = ["wfdb", "npy", "npz", "csv", "dicom", "mat", "cinc", "hdf5", "png", "jpeg"]


@pytest.fixture(scope="module")
def all_seeds(tmp_path_factory):
    return {s.name: s for s in seeds(tmp_path_factory.mktemp("seeds"))}


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupted_files_end_in_a_valid_ecg_or_a_typed_error(fmt, all_seeds, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"fuzz-{fmt}") / "case"
    outcomes = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1))
    def check(seed):
        outcome = fuzz_case(all_seeds[fmt], folder, np.random.default_rng(seed))
        outcomes.append(outcome)
        assert outcome in ("ok", "typed-error"), outcome

    check()
    assert len(outcomes) >= min(EXAMPLES, 50)


def test_the_seed_files_themselves_read(all_seeds, tmp_path):
    from ecgllm import read_ecg

    for seed in all_seeds.values():
        folder = tmp_path / seed.name
        folder.mkdir()
        for name, data in seed.files.items():
            (folder / name).write_bytes(data)
        ecg = read_ecg(folder / list(seed.files)[0], **seed.kwargs)
        if seed.name in ("png", "jpeg"):
            assert ecg.image.mode == "RGB" and ecg.size == (330, 255), seed.name
        else:
            assert ecg.signal.ndim == 2 and ecg.fs > 0, seed.name
