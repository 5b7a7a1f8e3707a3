"""Fetch PTB-XL from its public home with resume and SHA-256 verification.

The release's own ``SHA256SUMS.txt`` lists every file and its hash. Each file is downloaded to
``NAME.part`` (resumed with an HTTP Range request when a partial file exists), verified, and only
then moved into place; files already present with the right hash are skipped. Re-running after an
interruption therefore finishes the job without re-fetching what is done.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ecgllm.errors import InputError

PTBXL_URL = "https://physionet.org/files/ptb-xl/1.0.3/"
BLOCK = 1 << 16


class DownloadError(InputError):
    """A file could not be fetched or failed verification; the message names it."""


@dataclass
class DownloadReport:
    downloaded: int = 0
    skipped: int = 0
    resumed: int = 0
    bytes: int = 0


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_checksums(text: str) -> dict[str, str]:
    """``hash  path`` lines (sha256sum format) -> {path: hash}."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1].lstrip("*").lstrip("./")] = parts[0].lower()
    return out


def _open(url: str, start: int = 0, timeout: float = 60.0):
    request = urllib.request.Request(url, headers={"User-Agent": "ecgllm"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs only, checked by caller)


def fetch_file(url: str, target: Path, expected: str, report: DownloadReport) -> None:
    """Download one file with resume, verify its SHA-256, then move it into place."""
    if target.exists() and sha256(target) == expected:
        report.skipped += 1
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    try:
        with _open(url, start) as response:
            resumed = start > 0 and response.status == 206
            with part.open("ab" if resumed else "wb") as fh:
                for block in iter(lambda: response.read(BLOCK), b""):
                    fh.write(block)
                    report.bytes += len(block)
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: download failed ({exc}). Re-run the command to resume.") from None
    if sha256(part) != expected:
        part.unlink()
        raise DownloadError(f"{url}: SHA-256 mismatch; the partial file was removed. Re-run to fetch it again.")
    part.replace(target)
    report.downloaded += 1
    report.resumed += int(resumed)


def select_files(checksums: dict[str, str], fs: str) -> list[str]:
    """Metadata tables plus the record folders for ``fs`` ("100", "500" or "both")."""
    folders = {"100": ("records100/",), "500": ("records500/",), "both": ("records100/", "records500/")}[fs]
    return sorted(p for p in checksums if ("/" not in p and p.endswith(".csv")) or p.startswith(folders))


def download_ptbxl(out: str | Path, base_url: str = PTBXL_URL, fs: str = "100", workers: int = 8,
                   progress: bool = True) -> DownloadReport:
    """Mirror PTB-XL (metadata + ``records{fs}``) into ``out``; resumable and verified."""
    from tqdm import tqdm

    if not base_url.startswith(("http://", "https://")):
        raise DownloadError(f"{base_url}: only http(s) URLs are supported.")
    base_url = base_url.rstrip("/") + "/"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _open(base_url + "SHA256SUMS.txt") as response:
            listing = response.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{base_url}SHA256SUMS.txt: cannot fetch the file list ({exc}).") from None
    checksums = parse_checksums(listing)
    (out / "SHA256SUMS.txt").write_text(listing)
    files = select_files(checksums, fs)
    if not files:
        raise DownloadError(f"{base_url}SHA256SUMS.txt lists no files for records{fs}/.")
    report = DownloadReport()
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(files), unit="file",
                                                                 desc="downloading", disable=not progress) as bar:
        futures = [pool.submit(fetch_file, base_url + name, out / name, checksums[name], report) for name in files]
        for future in futures:
            try:
                future.result()
            except DownloadError as exc:
                errors.append(str(exc))
            bar.update(1)
    if errors:
        raise DownloadError(f"{len(errors)} of {len(files)} files failed, e.g. {errors[0]}")
    return report
