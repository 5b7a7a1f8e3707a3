"""REST API and web UI (FastAPI): ``create_app(assistant, settings)``; ``ecgllm serve`` runs it with uvicorn.

Endpoints: ``GET /v1/health``, ``POST /v1/ask``, ``POST /v1/report``, ``POST /v1/plot`` (the UI's plot +
measurements), the OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``
(`ecgllm.serving.openai_api`), ``GET /`` (the web UI), ``/docs`` and ``/openapi.json``.

Uploads are multipart (field ``ecg``: one or two records — single files, a WFDB ``.hea`` + ``.dat`` pair or a
zip of one record) or JSON arrays. Questions that arrive together are answered in one batch
(`ecgllm.serving.batcher`). Limits: upload bytes, image pixels (checked before decoding), record duration and
lead count, a per-request deadline that stops generation itself, and a bounded queue: beyond it the answer is 503
with ``Retry-After``. An API key, when set (header ``X-API-Key`` or ``Authorization: Bearer``, declared in the
OpenAPI schema), is compared in constant time. ``GET /example.zip`` is the bundled record, for the web UI.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ecgllm import __version__
from ecgllm.errors import InputError
from ecgllm.io.limits import ReadLimits
from ecgllm.serving.assistant import REPORT_QUESTION, AnswerTimeoutError
from ecgllm.serving.batcher import AnswerBatcher
from ecgllm.serving.openai_api import OPENAI_PATHS, add_openai_routes, openai_error
from ecgllm.serving.uploads import UploadError, UploadLimits, UploadTooLargeError, save_records

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLE_RECORD = Path(__file__).resolve().parents[1] / "data" / "ptbxl_00001_lr.hea"


class ErrorDetail(BaseModel):
    detail: str


class Timing(BaseModel):
    """Seconds the server spent on each part of the request."""
    read_s: float
    measure_s: float
    answer_s: float
    total_s: float


class AskResponse(BaseModel):
    answer: str
    question: str
    measurements: list[dict[str, Any]]  # one per ECG: heart rate, intervals, axis, quality; or {"error": ...}
    timing: Timing
    model: str
    warnings: list[str] = []  # e.g. a picture unlike the ECG pages the model learned to read: low confidence


class ReportResponse(BaseModel):
    report: str
    measurements: list[dict[str, Any]]
    timing: Timing
    model: str
    warnings: list[str] = []


class PlottedRecord(BaseModel):
    image: str  # a PNG data URL
    measurements: dict[str, Any]
    kind: str | None = None  # "image" for a picture shown as sent
    leads: list[str] | None = None
    fs: float | None = None
    duration_s: float | None = None


class PlotResponse(BaseModel):
    records: list[PlottedRecord]


def _documented(*codes: int) -> dict:
    """The error answers an endpoint can give, for the OpenAPI schema (clients and Schemathesis read them)."""
    meaning = {401: "missing or wrong API key", 413: "an upload over a size or pixel limit",
               422: "the request cannot be answered: an unreadable ECG, an empty question, a malformed body",
               503: "busy: every worker answers and the queue is full; retry after Retry-After seconds",
               504: "no answer within the request time (generation was stopped)"}
    return {code: {"model": ErrorDetail, "description": meaning[code]} for code in codes}


_ECG_JSON = {"type": "object", "required": ["signal", "fs", "leads"], "properties": {
    "signal": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
               "description": "one row of samples per lead, in millivolts"},
    "fs": {"type": "number", "description": "sampling rate, Hz"},
    "leads": {"type": "array", "items": {"type": "string"}, "description": "lead names, one per row"}},
    "additionalProperties": False}


def _upload_body(question: bool) -> dict:
    """The request body of an endpoint that reads ECGs: multipart files, or JSON signals."""
    multipart = {"ecg": {"type": "array", "items": {"type": "string", "format": "binary"},
                         "description": "one or two records: files, a WFDB .hea + .dat pair, a zip, a photo"}}
    json_body = {"ecgs": {"type": "array", "items": _ECG_JSON, "minItems": 1, "maxItems": 2}}
    required = ["question"] if question else []
    if question:
        multipart["question"] = json_body["question"] = {"type": "string"}
    # A small valid request (3 s of lead II at 100 Hz) for the docs' "try it out" and for Schemathesis.
    example: dict = {"ecgs": [{"signal": [[round(math.sin(i / 4.0), 3) for i in range(300)]], "fs": 100,
                               "leads": ["II"]}]}
    if question:
        example["question"] = "Is this a normal ECG?"
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": multipart, "required": ["ecg", *required],
                                           "additionalProperties": False}},
        "application/json": {"schema": {"type": "object", "properties": json_body, "required": ["ecgs", *required],
                                        "additionalProperties": False},
                             "example": example}}}}


@dataclass
class ServeSettings:
    api_key: str | None = None
    workers: int = 1                      # plots at once (answers run in `batches` batches at a time)
    queue: int = 128                      # requests allowed to wait; beyond that: 503 + Retry-After
    max_batch: int = 16                   # questions answered by one generate call
    batches: int = 1                      # batches generated at once (each on `torch.get_num_threads()` threads)
    batch_wait_s: float = 0.01            # how long the first waiting question holds its batch open
    request_timeout_s: float = 120.0
    retry_after_s: int = 5
    max_new_tokens: int = 64
    upload: UploadLimits = field(default_factory=UploadLimits)
    read: ReadLimits = field(default_factory=lambda: ReadLimits(max_duration_s=600.0, max_leads=16,
                                                                 max_file_bytes=50 * 2**20))


def refuse_unknown(fields, allowed: set[str]) -> None:
    unknown = sorted(set(fields.keys()) - allowed)
    if unknown:
        raise InputError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: this "
                         f"endpoint takes {', '.join(map(repr, sorted(allowed)))}")


class _Gate:
    """At most ``workers`` model calls at once and ``queue`` waiting; the rest are turned away."""

    def __init__(self, workers: int, queue: int) -> None:
        self.semaphore = asyncio.Semaphore(workers)
        self.capacity, self.inside = workers + queue, 0


def create_app(assistant, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    gate = _Gate(settings.workers, settings.queue)
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when the server sets a key")
    bearer = HTTPBearer(auto_error=False, description="the same key as OpenAI clients send it")

    async def check_key(given: str | None = Security(key_header),
                        token: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        key = given or (token.credentials if token else "")
        if settings.api_key and not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (header X-API-Key, or Authorization: Bearer)")

    protected = [Depends(check_key)]  # the model's endpoints; health, the UI and the schema stay open
    app = FastAPI(title="ecgllm", version=__version__,
                  description="Ask a language model about electrocardiograms. Not a medical device.")

    async def read_upload(request: Request, takes_question: bool) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
        """The uploaded files and the other fields; a field the endpoint does not take is refused (a misspelt
        'question' must not be answered as if none were asked)."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.upload.max_bytes + 65536:
            raise UploadTooLargeError(f"the request is larger than {settings.upload.max_bytes / 2**20:.0f} MiB")
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = await request.json()
            except (ValueError, RecursionError):  # not JSON, not UTF-8, or numbers/nesting Python refuses
                raise InputError("the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise InputError("the JSON body must be an object")
            refuse_unknown(body, {"ecgs", "question"} if takes_question else {"ecgs"})
            return [], body
        if not kind.startswith("multipart/form-data"):
            raise InputError("send multipart/form-data (field 'ecg' with files, 'question') or application/json")
        try:
            form = await request.form(max_files=settings.upload.max_files, max_fields=8)
        except StarletteHTTPException as exc:  # Starlette's 400 for too many files/fields or a broken body
            raise InputError(f"the multipart body cannot be read: {exc.detail} (at most "
                             f"{settings.upload.max_files} files in 'ecg', and 'question')") from None
        files = []
        for item in form.getlist("ecg"):
            if isinstance(item, str):
                raise InputError("the field 'ecg' must hold files")
            data = await item.read(settings.upload.max_bytes + 1)
            if len(data) > settings.upload.max_bytes:
                raise UploadTooLargeError(f"a file is larger than {settings.upload.max_bytes / 2**20:.0f} MiB")
            files.append((item.filename or "", data))
        refuse_unknown(form, {"ecg", "question"} if takes_question else {"ecg"})
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return files, fields

    def records_from(files, body, folder: Path):
        from ecgllm.io.reader import read_ecg
        from ecgllm.io.validate import build_ecg

        if files:
            try:
                return [read_ecg(p, limits=settings.read) for p in save_records(files, folder, settings.upload)]
            except UploadError:
                raise
            except InputError as exc:  # a reader names the file: the server's temporary path, not the client's
                raise UploadError(str(exc).replace(f"{folder}/", "uploaded ")) from None
        arrays = body.get("ecgs")
        if not isinstance(arrays, list) or not 1 <= len(arrays) <= 2:
            raise InputError('JSON needs "ecgs": a list of one or two {"signal": [[...], ...], "fs": Hz, '
                             '"leads": [...]} objects')
        import numpy as np

        out = []
        for item in arrays:
            if isinstance(item, dict):
                refuse_unknown(item, {"signal", "fs", "leads"})
            try:
                with np.errstate(over="ignore"):  # out-of-range values become inf, refused below as non-finite
                    signal = np.asarray(item["signal"], dtype=np.float32)
                fs, leads = float(item["fs"]), [str(x) for x in item["leads"]]
            except (KeyError, TypeError, ValueError, OverflowError):
                raise InputError('each ECG needs "signal" (leads x samples, mV), "fs" and "leads"') from None
            if signal.ndim != 2:
                raise InputError("signal must be a 2-D list: one row of samples per lead")
            out.append(build_ecg(signal, fs, leads, path=None, fmt="json", limits=settings.read))
        return out

    batcher = app.state.batcher = AnswerBatcher(assistant, settings.max_batch, settings.batch_wait_s,
                                                     settings.batches)
    preparing = asyncio.Semaphore(2)  # uploads read at once while a batch generates (measuring has its process)

    async def admitted(run) -> Any:
        """``run(deadline)`` for an admitted request: at most ``workers + queue`` are inside, the rest get 503.
        The deadline (admission + the timeout) stops generation itself, so the model never works on past it."""
        if gate.inside >= gate.capacity:
            raise HTTPException(503, "busy: every worker is answering and the queue is full; retry later",
                                headers={"Retry-After": str(settings.retry_after_s)})
        gate.inside += 1
        try:
            return await run(time.monotonic() + settings.request_timeout_s)
        except AnswerTimeoutError:
            raise HTTPException(504, f"no answer within {settings.request_timeout_s:g} s") from None
        finally:
            gate.inside -= 1

    async def answered(request: Request | None, prepare, max_new_tokens: int, measure: bool = False,
                       takes_question: bool = True,
                       pieces: asyncio.Queue | None = None) -> tuple[Any, str, list[dict], dict]:
        """An admitted request's upload is read and ``prepare(files, body)`` runs in a thread, giving
        ``(records, question, extra)``; the question then joins a batch while, with ``measure``, the records are
        measured beside it, in the measuring process, by the request's deadline. Returns ``(extra, answer text,
        measurements, timing)``."""
        from ecgllm.serving.measuring import measure_elsewhere

        async def measured(records: list, deadline: float) -> tuple[list[dict], float]:
            t0 = time.perf_counter()  # in a process of its own: no interpreter lock shared with generation
            return await measure_elsewhere(records, max(deadline - time.monotonic(), 0.0)), time.perf_counter() - t0

        async def run(deadline: float):
            files, body = await read_upload(request, takes_question) if request is not None else ([], {})
            started = time.perf_counter()
            async with preparing:  # reading uploads: a few at once, not one thread per request
                records, question, extra = await run_in_threadpool(prepare, files, body)
            prepared = time.perf_counter()
            answering = batcher.answer(records, question, max_new_tokens, deadline, pieces)
            if measure:
                text, (measurements, measure_s) = await asyncio.gather(answering, measured(records, deadline))
            else:
                text, measurements, measure_s = await answering, [], 0.0
            done = time.perf_counter()
            return extra, text, measurements, {"read_s": round(prepared - started, 4), "measure_s": round(measure_s, 4),
                                               "answer_s": round(done - prepared, 4),
                                               "total_s": round(done - started, 4)}
        return await admitted(run)

    async def guarded(work, request: Request) -> tuple[Any, list[dict]]:
        """``work(files, body) -> (result, records)`` of an upload without the model (plots): admitted, then
        ``workers`` at once; the records are then measured in the measuring process by the request's deadline,
        before the request leaves the gate. Returns ``(result, measurements)``."""
        from ecgllm.serving.measuring import measure_elsewhere

        async def run(deadline: float):
            files, body = await read_upload(request, takes_question=False)
            async with gate.semaphore:
                result, records = await run_in_threadpool(work, files, body)
            return result, await measure_elsewhere(records, max(deadline - time.monotonic(), 0.0))
        return await admitted(run)

    def read_records(files, body) -> list:
        with tempfile.TemporaryDirectory(prefix="ecgllm-upload-") as tmp:
            return records_from(files, body, Path(tmp))

    def read_checked(files, body, question: str) -> tuple[list, list[str]]:
        """The records, and warnings for pictures unlike the pages the model learned or asked about their noise; a
        picture that is no ECG page is refused here, before it is answered (422, or 400 in the OpenAI shape)."""
        records = read_records(files, body)
        return records, assistant.picture_warnings(records, question)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        status = 413 if isinstance(exc, UploadTooLargeError) else 422
        if request.url.path in OPENAI_PATHS:
            return openai_error(413 if status == 413 else 400, str(exc))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug of ours: a sentence, never a traceback
        import logging

        logging.getLogger("ecgllm.serving").exception("unexpected error on %s", request.url.path)
        message = f"the server failed on this request ({type(exc).__name__}); it is logged"
        if request.url.path in OPENAI_PATHS:
            return openai_error(500, message, "server_error")
        return JSONResponse({"detail": message}, status_code=500)

    @app.middleware("http")
    async def refuse_oversized(request: Request, call_next):
        """A declared body over the upload limit (base64 inflates files by 4/3) is refused before it is read."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.upload.max_bytes * 4 // 3 + 65536:
            message = f"the request is larger than {settings.upload.max_bytes / 2**20:.0f} MiB of ECG files"
            if request.url.path in OPENAI_PATHS:
                return openai_error(413, message)
            return JSONResponse({"detail": message}, status_code=413)
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if request.url.path in OPENAI_PATHS:
            response = openai_error(exc.status_code, str(exc.detail),
                                    "authentication_error" if exc.status_code == 401 else "server_error"
                                    if exc.status_code >= 500 else "invalid_request_error")
            response.headers.update(exc.headers or {})
            return response
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        if request.url.path in OPENAI_PATHS:
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
            return openai_error(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}")
        return await request_validation_exception_handler(request, exc)

    @app.get("/v1/health")
    async def health() -> dict:  # on the event loop: answers even when every worker thread is busy
        sizes = list(batcher.batches)
        import torch

        return {"status": "ok", "version": __version__, "model": assistant.name, "model_version": assistant.version,
                "waiting_or_running": gate.inside, "batches_at_once": settings.batches,
                "threads_per_batch": torch.get_num_threads(),
                "recent_batches": {"count": len(sizes), "mean_size": round(sum(sizes) / len(sizes), 2) if sizes else None,
                                   "max_size": max(sizes, default=None)}}

    add_openai_routes(app, assistant, settings, answered, read_checked, protected)

    @app.post("/v1/ask", dependencies=protected, responses=_documented(401, 413, 422, 503, 504),
              openapi_extra=_upload_body(question=True))
    async def ask(request: Request) -> AskResponse:
        """Multipart: ``ecg`` (1-2 records) + ``question``; or JSON {"question", "ecgs": [...]}."""
        def prepare(files, body):
            question = str(body.get("question", "")).strip()
            if not question:
                raise InputError("the question is empty (field 'question')")
            records, warnings = read_checked(files, body, question)
            return records, question, (question, warnings)

        (question, warnings), text, measurements, timing = await answered(request, prepare, settings.max_new_tokens,
                                                                          True)
        return {"answer": text, "question": question, "measurements": measurements, "timing": timing,
                "model": assistant.name, "warnings": warnings}

    @app.post("/v1/report", dependencies=protected, responses=_documented(401, 413, 422, 503, 504),
              openapi_extra=_upload_body(question=False))
    async def report(request: Request) -> ReportResponse:
        """Multipart ``ecg`` (one record) or JSON {"ecgs": [one]}: a short report with measurements."""
        def prepare(files, body):
            ecgs, warnings = read_checked(files, body, REPORT_QUESTION)
            if len(ecgs) != 1:
                raise InputError(f"a report is of one ECG; this upload holds {len(ecgs)}")
            return ecgs, REPORT_QUESTION, warnings

        warnings, text, measurements, timing = await answered(request, prepare, max(settings.max_new_tokens, 96),
                                                              True, takes_question=False)
        return {"report": text, "measurements": measurements, "timing": timing, "model": assistant.name,
                "warnings": warnings}

    @app.post("/v1/plot", dependencies=protected, responses=_documented(401, 413, 422, 503),
              response_model_exclude_none=True,  # a picture has no leads or rate; a signal is no "image" kind
              openapi_extra=_upload_body(question=False))
    async def plot(request: Request) -> PlotResponse:
        """The 12-lead plot (PNG as a data URL) and the measurements of each uploaded record."""
        def work(files, body):  # no generation: reading and plotting are bounded by the limits
            from ecgllm.io.image import ECGImage
            from ecgllm.render.plot import plot_ecg

            out, records = [], read_records(files, body)
            with tempfile.TemporaryDirectory(prefix="ecgllm-plot-") as tmp:
                for i, ecg in enumerate(records):
                    if isinstance(ecg, ECGImage):  # a picture is shown as it is (downscaled), not re-plotted
                        thumbnail = ecg.image.copy()
                        thumbnail.thumbnail((1100, 1100))
                        thumbnail.save(Path(tmp) / f"plot{i}.png")
                        out.append({"image": "data:image/png;base64," + base64.b64encode(
                            (Path(tmp) / f"plot{i}.png").read_bytes()).decode(), "kind": "image"})
                        continue
                    png = plot_ecg(ecg, Path(tmp) / f"plot{i}.png", dpi=70)
                    out.append({"image": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode(),
                                "leads": ecg.leads, "fs": ecg.fs, "duration_s": round(ecg.n_samples / ecg.fs, 2)})
            return out, records

        # measured in the measuring process, as answers' records are: not under the interpreter lock of generation
        out, measured = await guarded(work, request)
        for item, measurements in zip(out, measured):
            item["measurements"] = measurements
        return {"records": out}

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/example.zip", include_in_schema=False)
    def example() -> Response:
        """The bundled record (PTB-XL 1, WFDB) as a zip, for the web UI's "try the bundled example" button."""
        import io
        import zipfile

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for suffix in (".hea", ".dat"):
                archive.write(EXAMPLE_RECORD.with_suffix(suffix), f"ptbxl_00001_lr{suffix}")
        return Response(buffer.getvalue(), media_type="application/zip")

    return app
