"""The OpenAI-compatible face of the REST API: ``POST /v1/chat/completions`` and ``GET /v1/models``, so that
existing clients (the ``openai`` package, chat front-ends) can talk to ecgllm.

The ECG travels as a content part of a user message:
- ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``: a photo or scan of a printout;
- ``{"type": "file", "file": {"filename": "ecg.zip", "file_data": "<base64 or data URL>"}}``: a signal file
  (DICOM, .npy/.npz, .csv, .mat, .h5, ...) or a zip of one WFDB record.

One or two ECGs per conversation (two: the earlier first, as in ``ecgllm compare``), taken from the user
messages in order; the question is the text of the last user message. Earlier turns' text is not used: the
model answers one question at a time. Streaming sends the answer as one content chunk, then the end.
Errors have OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecgllm.errors import InputError

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,(?P<data>.*)$", re.S)
_IMAGE_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg"}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="a data URL: data:image/png;base64,... (remote URLs are not fetched)")


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class FileData(BaseModel):
    filename: str | None = Field(None, description="its extension names the format: .dcm, .npy, .csv, .zip, ...")
    file_data: str = Field(description="the file, base64 or a base64 data URL")


class FilePart(BaseModel):
    type: Literal["file"]
    file: FileData


ContentPart = Annotated[Union[TextPart, ImagePart, FilePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None


def _example_csv() -> str:
    """3 s of lead II at 100 Hz as a CSV file, base64: a small valid request for the docs and Schemathesis."""
    rows = "\n".join(f"{i / 100:.2f},{math.sin(i / 4.0):.3f}" for i in range(300))
    return base64.b64encode(f"time,II\n{rows}\n".encode()).decode()


# The other arguments of OpenAI's chat completions: accepted and ignored (answers are greedy and plain text), so
# that clients and front-ends that send them work. Any other argument is refused, as OpenAI refuses it.
IGNORED_OPENAI_ARGUMENTS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "metadata", "modalities",
    "moderation", "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_options", "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options"})


class ChatRequest(BaseModel):
    """What ecgllm reads of an OpenAI chat request; sampling options it does not use are accepted and ignored
    (answers are greedy, so they are reproducible); an argument OpenAI does not know either is refused."""
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{"model": "ecgllm-default", "messages": [
        {"role": "user", "content": [{"type": "file", "file": {"filename": "ecg.csv", "file_data": _example_csv()}},
                                     {"type": "text", "text": "Is this a normal ECG?"}]}]}]})
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, description="at most 512 are generated")
    max_completion_tokens: int | None = Field(None, ge=1, description="at most 512 are generated")

    @model_validator(mode="before")
    @classmethod
    def _known_arguments(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields) - IGNORED_OPENAI_ARGUMENTS)
            if unknown:
                raise ValueError(f"Unrecognized request argument supplied: {', '.join(unknown)}")
        return data


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


OPENAI_ERRORS = {code: {"model": OpenAIError, "description": text} for code, text in (
    (400, "an invalid request: no ECG, no question, undecodable content, an unknown field value"),
    (401, "missing or wrong API key (Authorization: Bearer)"), (413, "an upload over a size or pixel limit"),
    (503, "busy: retry after Retry-After seconds"), (504, "no answer within the request time"))}


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)


def decode_part(part: ImagePart | FilePart, index: int) -> tuple[str, bytes]:
    """A content part → (file name, bytes) for `save_records`; the name only carries the format."""
    if isinstance(part, ImagePart):
        match = _DATA_URL.match(part.image_url.url.strip())
        if not match:
            raise InputError("image_url must be a base64 data URL (data:image/png;base64,...); remote URLs are "
                             "not fetched")
        suffix = _IMAGE_SUFFIX.get((match["mime"] or "").lower())
        if suffix is None:
            raise InputError(f"image_url: {match['mime'] or 'no type'} is not accepted; send image/png or image/jpeg")
        return f"part{index}{suffix}", _b64(match["data"], "image_url")
    raw = part.file.file_data.strip()
    match = _DATA_URL.match(raw)
    data = _b64(match["data"] if match else raw, "file.file_data")
    name = part.file.filename or ""
    if not Path(name).suffix:
        raise InputError("file.filename must name the format by its extension (.dcm, .npy, .csv, .zip, ...)")
    return f"part{index}{Path(name).suffix.lower()}", data


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{field} is not valid base64") from None


def question_and_files(request: ChatRequest) -> tuple[str, list[tuple[str, bytes]]]:
    users = [m for m in request.messages if m.role == "user"]
    if not users:
        raise InputError("messages hold no user message")
    files: list[tuple[str, bytes]] = []
    for message in users:
        if isinstance(message.content, list):
            files += [decode_part(p, len(files)) for p in message.content if not isinstance(p, TextPart)]
    last = users[-1].content
    texts = [last] if isinstance(last, str) else [p.text for p in last or [] if isinstance(p, TextPart)]
    question = " ".join(t.strip() for t in texts if t and t.strip())
    if not question:
        raise InputError("the last user message has no text: it must ask a question")
    if not 1 <= len(files) <= 2:
        raise InputError(f"send one or two ECGs as content parts (image_url or file); the messages hold {len(files)}")
    return question, files


def add_openai_routes(app: FastAPI, assistant, settings, answered, read_checked, protected: list) -> None:
    """``answered(None, prepare, max_new_tokens)`` admits a request and batches its question; ``read_checked``
    turns uploaded files into ECG records and the warnings about pictures (`ECGAssistant.picture_warnings`);
    ``protected``: the API-key dependency (all from `ecgllm.serving.api`)."""

    @app.get("/v1/models")
    def models() -> dict:
        """The served model, in OpenAI's list shape, with what a client needs to prepare ECGs."""
        config = assistant.model.ecg_config
        return {"object": "list", "data": [{
            "id": assistant.name, "object": "model", "created": 0, "owned_by": "ecgllm",
            "version": assistant.version,
            "llm": Path(config.llm).name if config.llm else "SmolLM2-135M-Instruct (embedded)",
            "encoder": config.encoder, "tokens_per_ecg": assistant.model.tokens_per_ecg,
            "fs": assistant.processor.prep.fs, "leads": list(assistant.processor.prep.leads)}]}

    @app.post("/v1/chat/completions", dependencies=protected, responses={
        200: {"description": "the answer; with stream=true, server-sent chat.completion.chunk events",
              "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}}},
        **OPENAI_ERRORS})
    async def chat_completions(body: ChatRequest) -> Any:
        """OpenAI chat completions; the ECG(s) are content parts of the user messages (see the module doc)."""
        max_new = min(body.max_completion_tokens or body.max_tokens or settings.max_new_tokens, 512)

        def prepare(_files, _body):  # decoding the files is work: admitted, in a thread, off the event loop
            question, files = question_and_files(body)
            records, warnings = read_checked(files, {}, question)
            return records, question, warnings

        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            warnings, text, _, _ = await answered(None, prepare, max_new)
            # a picture unlike the pages the model learned: an extra field (OpenAI clients keep unknown fields)
            return {"id": ident, "object": "chat.completion", "created": created, "model": assistant.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}], **({"warnings": warnings} if warnings else {})}

        def chunk(delta: dict, finish: str | None = None, warnings: list[str] | None = None) -> str:
            return "data: " + json.dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                          "model": assistant.name, "choices": [{"index": 0, "delta": delta,
                                                                                "finish_reason": finish}],
                                          **({"warnings": warnings} if warnings else {})}) + "\n\n"

        pieces: asyncio.Queue = asyncio.Queue()
        answering = asyncio.ensure_future(answered(None, prepare, max_new, pieces=pieces))
        answering.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, never "lost"

        async def next_piece() -> str | None:
            """The answer's next piece as it is generated; None once the answer is done and every piece taken."""
            while not answering.done() or not pieces.empty():
                getting = asyncio.ensure_future(pieces.get())
                try:
                    await asyncio.wait({getting, answering}, return_when=asyncio.FIRST_COMPLETED)
                finally:  # also when the client has gone and this wait is cancelled
                    if not getting.done():
                        getting.cancel()
                if getting.done() and not getting.cancelled():
                    return getting.result()
            return None

        # The response starts with the first piece of the answer: a request refused before generating (bad input,
        # busy, out of time) still gets its error status and OpenAI's error body, not a stream.
        opening = await next_piece()
        if opening is None:
            answering.result()  # raises the request's error, answered as usual
            opening = ""

        def error_event(message: str) -> str:  # the stream has begun: an error is its last event, OpenAI's shape
            return "data: " + json.dumps({"error": {"message": message, "type": "server_error"}}) + "\n\n"

        async def events():
            sent = opening
            yield chunk({"role": "assistant", "content": opening})
            try:
                while (piece := await next_piece()) is not None:
                    sent += piece
                    yield chunk({"content": piece})
                try:
                    warnings, text = answering.result()[:2]
                except Exception as exc:
                    yield error_event(str(exc) or type(exc).__name__)
                    return
                if not text.startswith(sent):  # the pieces went astray (a batch answered again row by row)
                    yield error_event("the streamed text does not match the answer; ask again without stream")
                    return
                if text != sent:
                    yield chunk({"content": text[len(sent):]})
                yield chunk({}, "stop", warnings)  # the page check's note, if any, with the last chunk
                yield "data: [DONE]\n\n"
            finally:  # the client may have gone: its question leaves the batch queue and the gate
                if not answering.done():
                    answering.cancel()

        return StreamingResponse(events(), media_type="text/event-stream")
