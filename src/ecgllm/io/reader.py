"""`read_ecg`: the one entry point that turns any supported file into a validated `ECG`."""

from __future__ import annotations

from pathlib import Path

from ecgllm.io.errors import (CorruptFileError, ECGFileNotFoundError, ECGReadError, EmptyFileError, FileTooLargeError,
                              UnsupportedFormatError)
from ecgllm.io.formats.csv_format import read_csv
from ecgllm.io.formats.dicom_format import read_dicom
from ecgllm.io.formats.hdf5_format import read_code15_hdf5
from ecgllm.io.formats.mat_format import read_mat
from ecgllm.io.formats.numpy_format import read_numpy
from ecgllm.io.formats.raw import RawRecord
from ecgllm.io.formats.wfdb_format import header_path, read_wfdb, resolve_layout
from ecgllm.io.image import ECGImage, read_image
from ecgllm.io.limits import DEFAULT_LIMITS, ReadLimits
from ecgllm.io.record import ECG
from ecgllm.io.validate import build_ecg

FORMATS = ("wfdb", "numpy", "csv", "dicom", "mat", "hdf5")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
_BY_SUFFIX = {
    ".hea": "wfdb", ".dat": "wfdb", ".npy": "numpy", ".npz": "numpy", ".csv": "csv", ".tsv": "csv",
    ".txt": "csv", ".dcm": "dicom", ".dicom": "dicom", ".mat": "mat", ".h5": "hdf5", ".hdf5": "hdf5",
}


def sniff_format(path: Path) -> str:
    """Guess the format from the file's first bytes (used when the extension is missing or unknown)."""
    with path.open("rb") as fh:
        head = fh.read(1024)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x93NUMPY") or head.startswith(b"PK\x03\x04"):
        return "numpy"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"MATLAB"):
        return "mat"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")):
        return "image"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    fields = first.split()
    if len(fields) >= 3 and fields[1].isdigit() and fields[2].replace(".", "", 1).split("/")[0].isdigit():
        return "wfdb"
    return "csv"


def detect_format(path: Path) -> str:
    """Format name of ``path``: a folder layout, a known extension, or sniffed content."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix == ".mat" and header_path(path).exists():
        return "wfdb"  # PhysioNet/CinC .mat + .hea: the header carries gains, rate and lead names
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if not path.exists() and header_path(path).exists():
        return "wfdb"  # record path without extension
    return sniff_format(path)


def read_ecg(
    path: str | Path,
    *,
    fs: float | None = None,
    leads: list[str] | None = None,
    units: str = "mV",
    record_id: int | None = None,
    prefer_fs: int = 500,
    exam_id: int | None = None,
    index: int | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
    format: str | None = None,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> ECG | ECGImage:
    """Read one ECG from any supported file: a signal as `ECG`, a photo or scan of a printout as `ECGImage`.

    Args:
        path: a record file (.hea/.dat/extension-less WFDB path, .npy/.npz, .csv, .dcm, .mat, .h5), an image
            (.png, .jpg, ...; signal options do not apply), or a PTB-XL / MIMIC-IV-ECG dataset root together
            with ``record_id``.
        fs: sampling rate in Hz, for formats that do not store it (or to override a wrong header).
        leads: lead names, one per channel, for formats that do not store them.
        units: amplitude units of NumPy/CSV data ("mV", "uV", "V").
        record_id: PTB-XL ``ecg_id`` or MIMIC-IV-ECG ``study_id`` when ``path`` is a dataset root.
        prefer_fs: PTB-XL folder to try first (500 -> records500, else records100); the other is the fallback.
        exam_id, index: which exam of a multi-exam CODE-15% HDF5 file.
        start_s, duration_s: read only a window (useful for long Holter records).
        format: force a reader ("wfdb", "numpy", "csv", "dicom", "mat", "hdf5") instead of auto-detection.
        limits: size, rate and duration bounds (see `ReadLimits`).

    Raises:
        ECGReadError: a subclass naming the file, the problem and what to do.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in _BY_SUFFIX and path.is_dir():
        if record_id is None:
            raise UnsupportedFormatError(path, "is a folder.",
                                         "Pass a record file, or a dataset root with record_id=... (--record-id).")
        path = resolve_layout(path, int(record_id), prefer_fs)
    fmt = format or detect_format(path)
    if fmt not in FORMATS and fmt != "image":
        if not path.exists():
            raise ECGFileNotFoundError(path, "does not exist.", "Check the path.")
        raise UnsupportedFormatError(path, "is not in a format ecgllm reads.",
                                     f"Supported: WFDB, NumPy, CSV, DICOM, MATLAB (CinC/CPSC/CODE-15%), HDF5 "
                                     f"(CODE-15%); or force one with format= ({', '.join(FORMATS)}).")
    target = header_path(path) if fmt == "wfdb" else path
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        raise ECGFileNotFoundError(target, "does not exist.", "Check the path (and, for WFDB, the .hea file).") from None
    if size == 0:
        raise EmptyFileError(target, "is an empty file.", "Export or copy the recording again.")
    if size > limits.max_file_bytes:
        raise FileTooLargeError(target, f"is {size / 2**20:.1f} MiB; the limit is {limits.max_file_bytes / 2**20:.1f} MiB.",
                                "Raise ReadLimits.max_file_bytes if you trust this file.")
    if fmt == "image":
        return read_image(path, limits.max_image_pixels)

    try:
        raw = _read_raw(fmt, path, fs=fs, leads=leads, units=units, exam_id=exam_id, index=index,
                        start_s=start_s, duration_s=duration_s)
    except ECGReadError:
        raise
    except MemoryError:
        raise FileTooLargeError(path, "needs more memory to read than is available.",
                                "The header may announce a huge record; check the file.") from None
    except Exception as exc:  # third-party parsers raise anything on damaged files; users get one typed error
        raise CorruptFileError(path, f"could not be read as {fmt} ({type(exc).__name__}: {str(exc)[:200]}).",
                               "The file may be damaged or truncated; export or copy it again.") from exc
    if fmt != "wfdb" and (start_s or duration_s is not None):
        rate = raw.fs if raw.fs else 0
        a = int(round(start_s * rate))
        b = None if duration_s is None else a + int(round(duration_s * rate))
        raw.signal = raw.signal[:, a:b]
    names = list(leads) if leads is not None and fmt in ("wfdb", "dicom") else raw.names
    rate = fs if fs is not None else raw.fs
    return build_ecg(raw.signal, rate, names, path=path, fmt=fmt, meta=raw.meta, limits=limits)


def _read_raw(fmt: str, path: Path, *, fs, leads, units, exam_id, index, start_s, duration_s) -> RawRecord:
    if fmt == "wfdb":
        return read_wfdb(path, start_s=start_s, duration_s=duration_s)
    if fmt == "numpy":
        return read_numpy(path, fs=fs, leads=leads, units=units)
    if fmt == "csv":
        return read_csv(path, fs=fs, leads=leads, units=units)
    if fmt == "dicom":
        return read_dicom(path)
    if fmt == "mat":
        return read_mat(path, fs=fs, leads=leads)
    return read_code15_hdf5(path, exam_id=exam_id, index=index, fs=fs)
