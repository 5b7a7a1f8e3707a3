"""Uploaded ECG files -> records on disk, safely.

Every upload is written into a fresh temporary folder under names the server chooses (``rec0.hea``,
``rec1.dcm`` ...): a client's file name only contributes its extension, so no path a client writes can
escape or overwrite anything. A WFDB pair (``.hea`` + ``.dat``) becomes one record with its header rewritten
to the new names; a zip holds one record (members are read by base name, sizes bounded, nothing else
extracted).
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ecgllm.errors import InputError

SAFE_SUFFIXES = {".hea", ".dat", ".atr", ".npy", ".npz", ".csv", ".tsv", ".txt", ".dcm", ".mat", ".h5", ".hdf5",
                 ".png", ".jpg", ".jpeg", ".zip"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class UploadError(InputError):
    """An upload that cannot become an ECG record (wrong mix of files, bad zip, ...)."""


class UploadTooLargeError(UploadError):
    """An upload over a size or pixel limit."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 50 * 2**20          # per request, all files together (also bounds unzipped size)
    max_files: int = 4
    max_zip_members: int = 16
    max_image_pixels: int = 40_000_000   # decompression bombs: checked from the header, before decoding


def _suffix(name: str) -> str:
    suffix = Path(name or "").suffix.lower()
    if suffix not in SAFE_SUFFIXES:
        raise UploadError(f"file type {suffix or '(none)'!r} is not accepted; send WFDB (.hea + .dat, or a .zip of "
                          f"them), .npy/.npz, .csv, .dcm, .mat, .h5, or a .png/.jpg photo")
    return suffix


def _check_image(data: bytes, limits: UploadLimits) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise UploadError(f"the image cannot be read ({exc})") from None
    if width * height > limits.max_image_pixels:
        raise UploadTooLargeError(f"the image has {width}x{height} pixels; the limit is "
                                  f"{limits.max_image_pixels:,} pixels")


def _unzip(data: bytes, limits: UploadLimits) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadError("the .zip file is not a readable zip archive") from None
    members = [m for m in archive.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")]
    if not members or len(members) > limits.max_zip_members:
        raise UploadError(f"the zip must hold one record (1 to {limits.max_zip_members} files), "
                          f"it holds {len(members)}")
    if sum(m.file_size for m in members) > limits.max_bytes:
        raise UploadTooLargeError("the zip unpacks to more than the upload limit")
    out = []
    for m in members:
        with archive.open(m) as fh:
            content = fh.read(limits.max_bytes + 1)  # never trust the declared size alone
        if len(content) > limits.max_bytes:
            raise UploadTooLargeError("a zip member is larger than the upload limit")
        out.append((Path(m.filename).name, content))
    return out


_HEADER_NAME = re.compile(r"^(\S+)")


def _rewrite_header(text: str, stem: str, dat_names: dict[str, str]) -> str:
    """Point a WFDB header at the server's names for the record and its signal files."""
    lines = text.splitlines()
    out, first = [], True
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            out.append(line)
            continue
        if first:
            out.append(_HEADER_NAME.sub(stem, line, count=1))
            first = False
            continue
        name = line.split()[0]
        if name not in dat_names and len(set(dat_names.values())) == 1:
            name_to = next(iter(dat_names.values()))  # one signal file uploaded under another name: use it
            out.append(line.replace(name, name_to, 1))
            continue
        out.append(line.replace(name, dat_names.get(name, name), 1) if name in dat_names else line)
    return "\n".join(out) + "\n"


def save_records(files: list[tuple[str, bytes]], folder: Path, limits: UploadLimits = UploadLimits()) -> list[Path]:
    """Group uploaded (name, bytes) into 1-2 records written into ``folder``; returns their paths."""
    if not files:
        raise UploadError("no ECG file was uploaded (multipart field 'ecg')")
    if len(files) > limits.max_files:
        raise UploadError(f"at most {limits.max_files} files per request (two records)")
    if sum(len(d) for _, d in files) > limits.max_bytes:
        raise UploadTooLargeError(f"the upload is larger than {limits.max_bytes / 2**20:.0f} MiB")
    records: list[list[tuple[str, bytes]]] = []
    wfdb: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in files:
        suffix = _suffix(name)
        if suffix == ".zip":
            records.append(_unzip(data, limits))
        elif suffix in (".hea", ".dat", ".atr"):
            wfdb.setdefault(Path(name).stem, []).append((Path(name).name, data))
        else:
            records.append([(Path(name).name, data)])
    records += list(wfdb.values())
    if not 1 <= len(records) <= 2:
        raise UploadError(f"send one or two ECG records; this upload holds {len(records)}")
    paths = []
    for k, members in enumerate(records):
        paths.append(_write_record(members, folder, f"rec{k}", limits))
    return paths


def _write_record(members: list[tuple[str, bytes]], folder: Path, stem: str, limits: UploadLimits) -> Path:
    by_suffix: dict[str, list[tuple[str, bytes]]] = {}
    for name, data in members:
        by_suffix.setdefault(_suffix(name), []).append((name, data))
    if ".hea" in by_suffix:
        if len(by_suffix[".hea"]) != 1:
            raise UploadError("a WFDB record has exactly one .hea file")
        dats = by_suffix.get(".dat", [])
        dat_names = {name: f"{stem}{'' if i == 0 else i}.dat" for i, (name, _) in enumerate(dats)}
        for (name, data) in dats:
            (folder / dat_names[name]).write_bytes(data)
        header = by_suffix[".hea"][0][1].decode("latin-1")
        (folder / f"{stem}.hea").write_text(_rewrite_header(header, stem, dat_names), encoding="latin-1")
        return folder / f"{stem}.hea"
    if len(members) != 1:
        raise UploadError("a record other than WFDB is one file")
    (name, data), suffix = members[0], _suffix(members[0][0])
    if suffix in IMAGE_SUFFIXES:
        _check_image(data, limits)
    path = folder / f"{stem}{suffix}"
    path.write_bytes(data)
    return path
