"""Mutation fuzzing of every reader: a real seed file per format, corrupted (bit flips, truncation, inserted
or repeated bytes, edited header numbers), must read as a valid ECG or fail with a typed `ECGReadError` —
never another exception, never a hang. Shared by `tests/test_fuzz.py` (a few hundred inputs per format) and
`benchmarks/fuzz_readers.py` (10,000 per format)."""

from __future__ import annotations

import re
import shutil
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?")
EXTREMES = [b"0", b"-1", b"1e308", b"nan", b"99999999999", b"-2147483649", b"", b"x", b"0.0001", b"65536"]


@dataclass
class Seed:
    name: str
    files: dict[str, bytes]      # file name -> content (the first is the one passed to read_ecg)
    text: set[str] = field(default_factory=set)   # files whose numbers are worth editing
    kwargs: dict = field(default_factory=dict)    # read_ecg hints the format needs


def seeds(tmp: Path) -> list[Seed]:
    """One real small file per format, from the fixtures (CSV and NumPy made from a real record)."""
    from ecgllm import read_ecg

    ecg = read_ecg(FIXTURES / "ptbxl/records100/00000/00001_lr.hea")
    np.save(tmp / "rec.npy", ecg.signal[:, :500])
    np.savez(tmp / "rec.npz", signal=ecg.signal[:, :500], fs=np.float64(ecg.fs), leads=np.array(ecg.leads))
    csv = "\n".join(["time," + ",".join(ecg.leads)] +
                    [f"{t / ecg.fs:.3f}," + ",".join(f"{v:.3f}" for v in ecg.signal[:, t]) for t in range(300)])
    wfdb = FIXTURES / "ptbxl/records100/00000/00001_lr"
    from ecgllm.render import render_ecg

    page = render_ecg(ecg, dpi=30).image  # a small real render: 330 x 255 pixels
    page.save(tmp / "rec.png")
    page.save(tmp / "rec.jpg", quality=80)
    return [
        Seed("wfdb", {"rec.hea": wfdb.with_suffix(".hea").read_bytes().replace(b"00001_lr", b"rec"),
                      "rec.dat": wfdb.with_suffix(".dat").read_bytes()}, {"rec.hea"}),
        Seed("npy", {"rec.npy": (tmp / "rec.npy").read_bytes()}, kwargs={"fs": 100.0}),
        Seed("npz", {"rec.npz": (tmp / "rec.npz").read_bytes()}),
        Seed("csv", {"rec.csv": csv.encode()}, {"rec.csv"}),
        Seed("dicom", {"rec.dcm": (FIXTURES / "dicom/waveform_ecg.dcm").read_bytes()}),
        Seed("mat", {"rec.mat": (FIXTURES / "cpsc2018/A1982.mat").read_bytes()}),
        Seed("cinc", {"rec.hea": (FIXTURES / "cinc/00002_hrm.hea").read_bytes().replace(b"00002_hrm", b"rec"),
                      "rec.mat": (FIXTURES / "cinc/00002_hrm.mat").read_bytes()}, {"rec.hea"}),
        Seed("hdf5", {"rec.hdf5": (FIXTURES / "code15/exams_sample.hdf5").read_bytes()}, kwargs={"index": 0}),
        Seed("png", {"rec.png": (tmp / "rec.png").read_bytes()}),
        Seed("jpeg", {"rec.jpg": (tmp / "rec.jpg").read_bytes()}),
    ]


def mutate(data: bytes, rng: np.random.Generator, text: bool) -> bytes:
    """One to three random corruptions."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(6 if text else 5))
        n = len(out)
        if n == 0:
            out = bytearray(rng.bytes(int(rng.integers(1, 64))))
            continue
        i = int(rng.integers(n))
        if op == 0:                                   # flip bits
            for _ in range(int(rng.integers(1, 16))):
                j = int(rng.integers(n))
                out[j] ^= 1 << int(rng.integers(8))
        elif op == 1:                                 # truncate
            out = out[: int(rng.integers(n))]
        elif op == 2:                                 # insert random bytes
            out[i:i] = rng.bytes(int(rng.integers(1, 256)))
        elif op == 3:                                 # repeat a chunk
            j = min(n, i + int(rng.integers(1, 512)))
            out[i:i] = out[i:j] * int(rng.integers(1, 4))
        elif op == 4:                                 # overwrite a run with one byte value
            j = min(n, i + int(rng.integers(1, 64)))
            out[i:j] = bytes([int(rng.integers(256))]) * (j - i)
        else:                                         # edit a number in a text header
            numbers = list(NUMBER.finditer(bytes(out)))
            if numbers:
                m = numbers[int(rng.integers(len(numbers)))]
                out[m.start():m.end()] = EXTREMES[int(rng.integers(len(EXTREMES)))]
    return bytes(out)


class Hang(Exception):
    pass


def _alarm(_signum, _frame):
    raise Hang()


def fuzz_case(seed: Seed, folder: Path, rng: np.random.Generator, timeout_s: int = 10) -> str:
    """Write one mutated copy and read it: 'ok', 'typed-error', or 'crash: ...' / 'hang'."""
    from ecgllm import read_ecg
    from ecgllm.io.errors import ECGReadError
    from ecgllm.io.image import ECGImage

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    victim = list(seed.files)[int(rng.integers(len(seed.files)))]
    for name, data in seed.files.items():
        (folder / name).write_bytes(mutate(data, rng, name in seed.text) if name == victim else data)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ecg = read_ecg(folder / list(seed.files)[0], **seed.kwargs)
        if isinstance(ecg, ECGImage):
            return "ok" if ecg.image.mode == "RGB" and min(ecg.size) >= 64 else "crash: invalid image returned"
        if not (np.isfinite(ecg.signal).all() and ecg.signal.ndim == 2 and ecg.fs > 0):
            return "crash: invalid ECG returned"
        return "ok"
    except ECGReadError:
        return "typed-error"
    except Hang:
        return "hang"
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        return f"crash: {type(exc).__name__}: {str(exc)[:120]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
