"""The OpenAI-compatible endpoint: the real `openai` package against a served shipped model (a signal file, a
photo-like render, two ECGs in one message, streaming), and OpenAI-shaped errors for bad requests."""

from __future__ import annotations

import base64
import json
import io
import subprocess
import sys
import time
import zipfile

import pytest

from tests.conftest import FIXTURES, PTBXL_1
from tests.test_api import _free_port, client_for

DICOM = FIXTURES / "dicom/waveform_ecg.dcm"


def file_part(name: str, data: bytes) -> dict:
    return {"type": "file", "file": {"filename": name, "file_data": base64.b64encode(data).decode()}}


def wfdb_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.write(PTBXL_1, "00001_lr.hea")
        z.write(PTBXL_1.with_suffix(".dat"), "00001_lr.dat")
    return buffer.getvalue()


def rendered_png() -> bytes:
    from ecgllm.io.reader import read_ecg
    from ecgllm.render import render_ecg

    image = render_ecg(read_ecg(PTBXL_1)).image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shipped_server():
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--port", str(port),
                             "--max-new-tokens", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    else:
        proc.kill()
    if proc.poll() is not None:
        pytest.fail(f"server did not start: {proc.stdout.read()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_the_openai_package_talks_to_the_served_model(shipped_server):
    import openai

    client = openai.OpenAI(base_url=shipped_server + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    assert model == "ecgllm-default" and "/" not in model  # a name, never the server's path

    def ask(parts: list[dict], question: str, **kwargs):
        return client.chat.completions.create(model=model, max_tokens=8, messages=[
            {"role": "user", "content": [*parts, {"type": "text", "text": question}]}], **kwargs)

    signal = ask([file_part("ecg.dcm", DICOM.read_bytes())], "Does this ECG show atrial fibrillation?")
    assert signal.choices[0].message.content.strip() and signal.choices[0].finish_reason == "stop"
    png = "data:image/png;base64," + base64.b64encode(rendered_png()).decode()
    image = ask([{"type": "image_url", "image_url": {"url": png}}], "Is this a normal ECG?")
    assert image.choices[0].message.content.strip()
    two = ask([file_part("old.zip", wfdb_zip()), file_part("new.dcm", DICOM.read_bytes())],
              "Does the recent ECG show any changes compared to the previous ECG?")
    assert two.choices[0].message.content.strip()
    stream = ask([file_part("ecg.dcm", DICOM.read_bytes())], "Does this ECG show atrial fibrillation?", stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert streamed == signal.choices[0].message.content  # greedy: the same answer, streamed
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "No ECG here?"}])
    assert "one or two ECGs" in error.value.body["message"]


def test_bad_chat_requests_get_openai_shaped_4xx(assistant):
    client = client_for(assistant)
    dicom = file_part("ecg.dcm", DICOM.read_bytes())
    bad = [
        {"messages": []},
        {"messages": [{"role": "user", "content": [dicom]}]},  # no question
        {"messages": [{"role": "user", "content": [dicom, dicom, dicom, {"type": "text", "text": "x?"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"filename": "a.dcm", "file_data": "%%"}},
                                                   {"type": "text", "text": "x?"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                                                   {"type": "text", "text": "x?"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"filename": "a.exe", "file_data": ""}},
                                                   {"type": "text", "text": "x?"}]}]},
        {"messages": [{"role": "wizard", "content": "x?"}]},
        {"messages": "hello"},
        {"messages": [{"role": "user", "content": [dicom, {"type": "text", "text": "x?"}]}], "temprature": 0},
    ]
    for body in bad:
        r = client.post("/v1/chat/completions", json=body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"], r.text
    r = client.post("/v1/chat/completions", json=bad[-1])
    assert "Unrecognized request argument supplied: temprature" in r.json()["error"]["message"], r.text
    known = {"messages": bad[-1]["messages"], "temperature": 0.2, "top_p": 1, "user": "u1", "seed": 1}
    assert client.post("/v1/chat/completions", json=known).status_code == 200  # OpenAI's own arguments: ignored
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    keyed = client_for(assistant, api_key="s3cret")
    body = {"messages": [{"role": "user", "content": [dicom, {"type": "text", "text": "Rhythm?"}]}]}
    r = keyed.post("/v1/chat/completions", json=body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert keyed.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.fixture(scope="module")
def assistant(tiny_checkpoint):
    from ecgllm import ECGAssistant

    return ECGAssistant.load(tiny_checkpoint)


def test_every_argument_of_the_openai_client_is_read_or_accepted_and_ignored():
    """An argument the `openai` package can send must not be refused as unknown (README: clients work unchanged)."""
    import inspect

    from openai.resources.chat.completions import Completions

    from ecgllm.serving.openai_api import IGNORED_OPENAI_ARGUMENTS, ChatRequest

    transport = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}  # never in the JSON body
    sent = set(inspect.signature(Completions.create).parameters) - transport
    assert "messages" in sent and "temperature" in sent
    assert sent <= set(ChatRequest.model_fields) | IGNORED_OPENAI_ARGUMENTS, sorted(
        sent - set(ChatRequest.model_fields) - IGNORED_OPENAI_ARGUMENTS)


@pytest.mark.parametrize("prompt_first", [True, False])
def test_a_streamed_answer_comes_piece_by_piece_and_adds_up_to_the_answer(assistant, monkeypatch, prompt_first):
    """The untrained tiny model says nothing readable, so its generate is replaced by one that says a known answer
    token by token to the streamer it is given: the prompt first, as transformers' generate does, or not (a
    generate that sends no prompt must stream the same answer)."""
    import torch

    said = "sinus rhythm with first degree av block and left axis deviation"
    tokens = assistant.processor.tokenizer.encode(said, add_special_tokens=False)

    def generate(input_ids=None, streamer=None, max_new_tokens=64, **kwargs):
        rows = torch.tensor([tokens[:max_new_tokens]] * input_ids.shape[0])
        if streamer is not None:
            if prompt_first:
                streamer.put(input_ids[:, :0])
            for step in range(rows.shape[1]):
                streamer.put(rows[:, step])
            streamer.end()
        return rows

    monkeypatch.setattr(assistant.model, "generate", generate)
    client = client_for(assistant)
    body = {"messages": [{"role": "user", "content": [file_part("ecg.dcm", DICOM.read_bytes()),
                                                       {"type": "text", "text": "Rhythm?"}]}], "max_tokens": 64}
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert "".join(x or "" for x in contents) == whole and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert whole == said and len([x for x in contents if x]) >= 5, contents  # pieces, not one block
    r = client.post("/v1/chat/completions", json={**body, "stream": True, "messages": [
        {"role": "user", "content": "No ECG here?"}]})
    assert r.status_code == 400 and "one or two ECGs" in r.json()["error"]["message"]  # an error, not a stream
