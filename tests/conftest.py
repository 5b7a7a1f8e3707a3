from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PTBXL_1 = FIXTURES / "ptbxl/records100/00000/00001_lr.hea"

needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is not available")


@pytest.fixture
def ptbxl_signal() -> tuple[np.ndarray, float]:
    """Real 12-lead samples (PTB-XL ecg_id 1, 100 Hz) as [12, 1000] mV."""
    from ecgllm import read_ecg

    ecg = read_ecg(PTBXL_1)
    return ecg.signal.copy(), ecg.fs


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A tiny BPE tokenizer with a chat template (see tests/tiny_models.py); one per test module."""
    from tests.tiny_models import make_tiny_tokenizer

    return make_tiny_tokenizer()
