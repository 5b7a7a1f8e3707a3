"""PTB-XL and ECG-QA loaders, the training cache and the verified, resumable download."""

from __future__ import annotations

import hashlib
import http.server
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from ecgllm.datasets import ECGQA, PTBXL
from ecgllm.datasets.cache import ECGCache, build_cache
from ecgllm.datasets.download import DownloadError, download_ptbxl
from ecgllm.datasets.ecgqa import QUESTION_TYPES, ECGQAFormatError, read_qa_file
from ecgllm.datasets.ptbxl import DatasetError
from ecgllm.serving.cli import main
from ecgllm.signal import PrepConfig, prepare
from tests.conftest import FIXTURES, SHARED, needs_shared


def test_ptbxl_official_layout():
    p = PTBXL.load(FIXTURES / "ptbxl")
    assert list(p.ecg_ids) == [1, 2] and p.root is not None and p.missing == []
    assert p.table.at[1, "scp_codes"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert p.labels(1, "superclass") == ["NORM"] and p.labels(1, "form") == ["LVOLT"]
    assert p.labels(1, "rhythm") == ["SR"] and p.labels(1, "all", min_likelihood=50) == ["NORM"]
    assert p.record_path(1).name == "00001_hr" and p.record_path(2).name == "00002_lr"


def test_ptbxl_label_table_degrades_gracefully():
    p = PTBXL.load(FIXTURES / "ptbxl_labels")
    assert len(p.table) == 120 and p.root is None
    assert any("only for 60 of 120" in m for m in p.missing) and any("signals" in m for m in p.missing)
    assert p.table.at[8, "scp_codes"] == {"IMI": 35.0, "ABQRS": 0.0, "SR": 0.0}  # likelihoods from official row
    assert all(math.isnan(v) for v in p.table.at[100, "scp_codes"].values())  # presence only
    assert p.table.at[8, "has_official_metadata"] and not p.table.at[100, "has_official_metadata"]
    assert isinstance(p.table.at[100, "report"], float)  # unknown stays NaN, never invented
    with pytest.raises(DatasetError, match="no records100"):
        p.record_path(1)


def test_ptbxl_aggregations_and_splits():
    p = PTBXL.load(FIXTURES / "ptbxl_labels")
    ids, classes, y = p.label_matrix("superclass")
    assert classes == ["NORM", "MI", "STTC", "CD", "HYP"] and y.shape == (120, 5)
    assert len(p.classes("all")) == 71 and len(p.classes("diagnostic")) == 44
    assert len(p.classes("form")) == 19 and len(p.classes("rhythm")) == 12 and len(p.classes("subclass")) == 23
    folds = {k: set(p.table.loc[p.split_ids(k), "strat_fold"]) for k in ("train", "valid", "test")}
    assert folds["train"] <= set(range(1, 9)) and folds["valid"] <= {9} and folds["test"] <= {10}


@needs_shared
def test_ptbxl_full_label_counts_match_the_paper():
    p = PTBXL.load(SHARED / "ptbxl")
    _, _, y = p.label_matrix("superclass")
    assert y.sum(0).tolist() == [9514, 5469, 5235, 4898, 2649] and int((y.sum(1) == 0).sum()) == 411


def test_missing_dataset_folder():
    with pytest.raises(DatasetError, match="scp_statements.csv"):
        PTBXL.load(FIXTURES / "mitdb")


def test_ecgqa_official_loader():
    qa = ECGQA(FIXTURES / "ecgqa")  # the release root defaults to the PTB-XL version
    train = qa.samples("train")
    assert len(train) == 80 and {s.template_id for s in train} >= {26, 68}
    assert {s.question_type for s in train} <= set(QUESTION_TYPES)
    comparison = next(s for s in train if s.is_comparison)
    assert len(comparison.ecg_id) == 2 and comparison.attribute is None
    para = qa.samples("valid", "paraphrased")
    tmpl = {s.sample_id: s for s in qa.samples("valid", "template")}
    # Same samples, reworded questions; answers are sets (the variants list them in different orders).
    assert all(set(tmpl[s.sample_id].answer) == set(s.answer) for s in para)
    assert all(tmpl[s.sample_id].ecg_id == s.ecg_id for s in para)
    assert {k: len(qa.split_ecg_ids(k)) for k in ("train", "valid", "test")} == \
        {"train": 11566, "valid": 1274, "test": 3214}
    assert len(qa.answers()) == 104 and qa.template_answers()[2] == ["no", "yes"]


def test_ecgqa_maps_records500_with_fallback_to_records100():
    qa = ECGQA(FIXTURES / "ecgqa/ptbxl")
    sample = read_qa_file(FIXTURES / "ecgqa/ptbxl/template/train/120000.json")[0]
    sample.ecg_id = [1, 2]
    paths = qa.ecg_paths(sample, FIXTURES / "ptbxl")
    assert [p.name for p in paths] == ["00001_hr", "00002_lr"]


def test_ecgqa_bad_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ECGQAFormatError, match="a.json"):
        read_qa_file(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('[{"sample_id": 1}]')
    with pytest.raises(ECGQAFormatError, match="lacks the fields"):
        read_qa_file(tmp_path / "b.json")
    with pytest.raises(ECGQAFormatError, match="answers.csv"):
        ECGQA(tmp_path)


@pytest.mark.parametrize("workers", [1, 2])
def test_cache_round_trip(tmp_path, workers):
    p = PTBXL.load(FIXTURES / "ptbxl")
    paths = [p.record_path(i, prefer_fs=100) for i in p.ecg_ids]
    config = PrepConfig(fs=100.0, bandpass=None, window_s=10.0)
    out = build_cache(paths, p.table[["strat_fold"]].reset_index(), tmp_path / "c", config, "test",
                      workers=workers, progress=False)
    cache = ECGCache.open(out)
    assert len(cache) == 2 and cache.meta["fs"] == 100.0 and cache.index["ok"].all()
    from ecgllm import read_ecg

    direct = prepare(read_ecg(paths[1]), config).signal
    assert np.abs(cache.batch([2])[0] - direct).max() < 2e-3  # float16 storage
    assert cache.batch([2, 1]).shape == (2, 12, 1000)
    with pytest.raises(FileExistsError):
        build_cache(paths, p.table.reset_index(), out, config, "test", workers=1, progress=False)
    assert not list(tmp_path.glob("*.partial-*"))  # nothing half-written left behind


def test_cli_data_prepare(tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(["data", "prepare", "ptbxl", "--source", str(FIXTURES / "ptbxl"), "--out", str(out),
                 "--quiet"]) == 0
    assert "2 records" in capsys.readouterr().out and ECGCache.open(out).batch([1]).shape == (1, 12, 1000)
    assert main(["data", "prepare", "ptbxl", "--source", str(FIXTURES / "ptbxl_labels"), "--out",
                 str(tmp_path / "x"), "--quiet"]) == 3
    assert "no records100" in capsys.readouterr().err


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (like the real host), counting requests."""

    requests: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def ptbxl_server(tmp_path):
    """The real PTB-XL sample layout served on 127.0.0.1 with a SHA256SUMS.txt like the release's."""
    root = tmp_path / "served"
    source = SHARED / "ptbxl/wfdb_sample" if SHARED.exists() else FIXTURES / "ptbxl"
    shutil.copytree(source, root)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file()]
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")
    handler = type("H", (_RangeHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, handler
    server.shutdown()


def test_download_verifies_resumes_and_skips(tmp_path, ptbxl_server):
    url, root, handler = ptbxl_server
    out = tmp_path / "ptb-xl"
    first = sorted((root / "records100").rglob("*.dat"))[0]
    partial = out / first.relative_to(root)
    partial.parent.mkdir(parents=True)
    partial.with_name(partial.name + ".part").write_bytes(first.read_bytes()[:1000])  # an interrupted run
    report = download_ptbxl(out, base_url=url, fs="100", workers=4, progress=False)
    expected = [p for p in root.rglob("*") if p.is_file() and "records500" not in p.parts and p.suffix != ".txt"]
    assert report.downloaded == len(expected) and report.resumed == 1
    for p in expected:
        assert (out / p.relative_to(root)).read_bytes() == p.read_bytes()
    assert not list(out.rglob("*.part")) and not (out / "records500").exists()
    again = download_ptbxl(out, base_url=url, fs="100", workers=4, progress=False)
    assert again.downloaded == 0 and again.skipped == len(expected)
    assert PTBXL.load(out).root == out  # what was fetched is a loadable PTB-XL


def test_download_rejects_corrupted_files(tmp_path, ptbxl_server):
    url, root, _ = ptbxl_server
    victim = sorted((root / "records100").rglob("*.dat"))[0]
    victim.write_bytes(b"corrupted" + victim.read_bytes()[9:])  # the server now serves wrong bytes
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_ptbxl(tmp_path / "o", base_url=url, fs="100", workers=2, progress=False)
    assert not (tmp_path / "o" / victim.relative_to(root)).exists()


def test_download_unreachable_host(tmp_path, capsys):
    assert main(["data", "download", "ptbxl", "--out", str(tmp_path), "--url", "http://127.0.0.1:9/",
                 "--quiet"]) == 3
    assert "cannot fetch the file list" in capsys.readouterr().err


def test_cache_marks_unreadable_records_instead_of_failing(tmp_path):
    good = FIXTURES / "ptbxl/records100/00000/00001_lr"
    for ext in (".hea", ".dat"):
        shutil.copyfile(FIXTURES / f"ptbxl/records100/00000/00002_lr{ext}", tmp_path / f"00002_lr{ext}")
    dat = tmp_path / "00002_lr.dat"
    dat.write_bytes(dat.read_bytes()[:1000])  # truncated
    index = PTBXL.load(FIXTURES / "ptbxl").table[["strat_fold"]].reset_index()
    out = build_cache([good, tmp_path / "00002_lr"], index, tmp_path / "c", PrepConfig(bandpass=None), "test",
                      workers=1, progress=False)
    cache = ECGCache.open(out)
    assert cache.index["ok"].tolist() == [True, False]
    assert cache.meta["n_failed"] == 1 and "00002_lr" in cache.meta["failures"][0]
    assert np.abs(cache.batch([1])).max() > 0 and np.abs(cache.batch([2])).max() == 0


def test_a_cached_ecg_masks_a_flat_lead_as_answering_the_recording_does(tmp_path):
    """The cache keeps each record's lead mask: a lead that was flat in the recording is masked in training as it
    is when the same file is answered (the cache used to hand it back as a present, flat lead)."""
    import wfdb

    from ecgllm import read_ecg
    from ecgllm.signal import PrepConfig as Prep
    from ecgllm.signal.prepare import prepare

    record = wfdb.rdrecord(str(FIXTURES / "ptbxl/records100/00000/00001_lr"))
    signal = record.p_signal.copy()
    signal[:, record.sig_name.index("V3")] = 0.0  # a lead that came off
    wfdb.wrsamp("00001_lr", fs=record.fs, units=record.units, sig_name=record.sig_name, p_signal=signal,
                fmt=["16"] * len(record.sig_name), write_dir=str(tmp_path))
    index = PTBXL.load(FIXTURES / "ptbxl").table[["strat_fold"]].reset_index().iloc[:1]
    config = Prep(bandpass=None)
    cache = ECGCache.open(build_cache([tmp_path / "00001_lr"], index, tmp_path / "c", config, "test", workers=1,
                                      progress=False))
    served = prepare(read_ecg(tmp_path / "00001_lr.hea"), config).mask
    trained = prepare(cache.ecgs([1])[0], config).mask
    assert not served[config.leads.index("V3")] and served.sum() == 11
    assert cache.masks[0].tolist() == served.tolist() and trained.tolist() == served.tolist()
    (tmp_path / "c" / "masks.npy").unlink()  # a cache from before masks were kept: every lead present, as then
    assert prepare(ECGCache.open(tmp_path / "c").ecgs([1])[0], config).mask.all()
