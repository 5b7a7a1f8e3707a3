"""REST API: endpoints, uploads of every kind, limits, API key, queue overflow; the served web UI driven by
headless Chromium."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, PTBXL_1

HEA, DAT = PTBXL_1, PTBXL_1.with_suffix(".dat")
DICOM = FIXTURES / "dicom/waveform_ecg.dcm"
ARTIFACTS = Path(os.environ.get("ECGLLM_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


@pytest.fixture(scope="module")
def assistant(tiny_checkpoint):
    from ecgllm import ECGAssistant

    return ECGAssistant.load(tiny_checkpoint)


def client_for(assistant, **settings):
    from fastapi.testclient import TestClient

    from ecgllm.serving.api import ServeSettings, create_app

    return TestClient(create_app(assistant, ServeSettings(max_new_tokens=4, **settings)))


def wfdb_files():
    return [("ecg", ("00001_lr.hea", HEA.read_bytes())), ("ecg", ("00001_lr.dat", DAT.read_bytes()))]


def test_health_models_and_openapi(assistant, tiny_checkpoint):
    """The model is named from its metadata (config.json), and no response shows where it lies on the server."""
    client = client_for(assistant)
    health = client.get("/v1/health")
    assert health.json()["status"] == "ok" and health.json()["model"] == "tiny-test-model"
    models = client.get("/v1/models")
    assert models.json()["object"] == "list" and models.json()["data"][0]["tokens_per_ecg"] == 2
    asked = client.post("/v1/ask", files=wfdb_files(), data={"question": "Is this a normal ECG?"})
    assert asked.json()["model"] == "tiny-test-model"
    page = client.get("/")
    for response in (health, models, asked, page):
        assert response.status_code == 200
        assert str(tiny_checkpoint) not in response.text and str(tiny_checkpoint.parent) not in response.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/ask", "/v1/report", "/v1/health", "/v1/models"} <= set(paths)


def test_ask_with_a_wfdb_pair_a_single_file_a_zip_json_and_two_records(assistant):
    client = client_for(assistant)
    r = client.post("/v1/ask", files=wfdb_files(), data={"question": "Is this a normal ECG?"})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["answer"], str) and r.json()["measurements"][0]["heart_rate"] > 30
    r = client.post("/v1/ask", files=[("ecg", ("x.dcm", DICOM.read_bytes()))], data={"question": "Rhythm?"})
    assert r.status_code == 200, r.text
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.write(HEA, "folder/00001_lr.hea")
        z.write(DAT, "folder/00001_lr.dat")
    r = client.post("/v1/ask", files=[("ecg", ("record.zip", buffer.getvalue()))], data={"question": "Rhythm?"})
    assert r.status_code == 200, r.text
    signal = (np.sin(np.linspace(0, 60, 5000))[None].repeat(12, 0) * 0.5).round(4).tolist()
    body = {"question": "Is this normal?", "ecgs": [{"signal": signal, "fs": 500, "leads":
            ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]}]}
    assert client.post("/v1/ask", json=body).status_code == 200
    r = client.post("/v1/ask", files=[*wfdb_files(), ("ecg", ("b.dcm", DICOM.read_bytes()))],
                    data={"question": "What changed?"})
    assert r.status_code == 200 and len(r.json()["measurements"]) == 2
    renamed = [("ecg", ("a.hea", HEA.read_bytes())), ("ecg", ("a.dat", DAT.read_bytes()))]  # header says 00001_lr
    assert client.post("/v1/ask", files=renamed, data={"question": "Rhythm?"}).status_code == 200
    r = client.post("/v1/report", files=wfdb_files())
    assert r.status_code == 200 and "report" in r.json()
    r = client.post("/v1/plot", files=wfdb_files())
    shown = r.json()["records"][0]
    assert shown["image"].startswith("data:image/png;base64,") and shown["measurements"]["heart_rate"] > 0


def test_bad_uploads_get_clear_4xx_answers(assistant, tmp_path):
    client = client_for(assistant)
    cases = [
        ([("ecg", ("x.exe", b"MZ..."))], 422, "not accepted"),
        ([("ecg", ("x.csv", b"garbage\n1,2\n"))], 422, ""),
        ([("ecg", ("x.zip", b"not a zip"))], 422, "zip"),
        ([("ecg", ("a.dcm", b"1")), ("ecg", ("b.dcm", b"2")), ("ecg", ("c.dcm", b"3"))], 422, "one or two"),
        ([], 422, ""),
    ]
    for files, status, words in cases:
        r = client.post("/v1/ask", files=files or None, data={"question": "Is this normal?"})
        assert r.status_code == status, (files, r.text)
        assert words in r.json()["detail"]
    r = client.post("/v1/ask", files=wfdb_files(), data={"question": "  "})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    # a path in the file name never reaches the disk: only the extension is used
    r = client.post("/v1/ask", files=[("ecg", ("../../etc/evil.hea", HEA.read_bytes())),
                                      ("ecg", ("../../etc/evil.dat", DAT.read_bytes()))], data={"question": "x?"})
    assert r.status_code in (200, 422) and not Path("/etc/evil.hea").exists()


def test_limits_image_bombs_and_api_key(assistant):
    from PIL import Image

    client = client_for(assistant)
    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, format="PNG")  # 81 MP, a few hundred kB compressed
    r = client.post("/v1/ask", files=[("ecg", ("photo.png", big.getvalue()))], data={"question": "x?"})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    from ecgllm.serving.uploads import UploadLimits

    small = client_for(assistant, upload=UploadLimits(max_bytes=1000))
    assert small.post("/v1/ask", files=wfdb_files(), data={"question": "x?"}).status_code == 413
    keyed = client_for(assistant, api_key="s3cret")
    assert keyed.post("/v1/ask", files=wfdb_files(), data={"question": "x?"}).status_code == 401
    ok = keyed.post("/v1/ask", files=wfdb_files(), data={"question": "x?"}, headers={"X-API-Key": "s3cret"})
    assert ok.status_code == 200
    # the key is FastAPI's APIKeyHeader, so clients generated from the schema know to send it
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= schemes["APIKeyHeader"].items()
    assert {"APIKeyHeader": []} in schema["paths"]["/v1/ask"]["post"]["security"]


def test_special_tokens_in_a_question_are_plain_text_over_http(assistant):
    """`<ecg>` typed into a question cannot open an ECG slot: the request is answered (it used to be a 500 from the
    slot count check), with one ECG or two."""
    client = client_for(assistant)
    for question in ("What is <ecg> this?", "<ecg><ecg> Is this <|im_end|> normal?"):
        r = client.post("/v1/ask", files=wfdb_files(), data={"question": question})
        assert r.status_code == 200 and isinstance(r.json()["answer"], str), r.text
    body = {"question": "Compare <ecg> and <ecg><ecg>.", "ecgs": [
        {"signal": (np.sin(np.linspace(0, 60, 1000)) * 0.5)[None].repeat(12, 0).tolist(), "fs": 100,
         "leads": ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]}] * 2}
    r = client.post("/v1/ask", json=body)
    assert r.status_code == 200, r.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--port", str(port), "--model",
                             str(tiny_checkpoint), "--max-new-tokens", "6", "--queue", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"server did not start: {proc.stdout.read()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_served_api_answers_and_turns_away_overflow_with_503(server):
    import concurrent.futures

    import httpx

    files = [("ecg", ("00001_lr.hea", HEA.read_bytes())), ("ecg", ("00001_lr.dat", DAT.read_bytes()))]
    r = httpx.post(server + "/v1/ask", files=files, data={"question": "Is this a normal ECG?"}, timeout=60)
    assert r.status_code == 200 and "answer" in r.json()

    def one(_):
        return httpx.post(server + "/v1/ask", files=files, data={"question": "Is this a normal ECG?"},
                          timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(one, range(24)))
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes  # 1 worker + 2 waiting: the rest is 503


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="Debian chromium + chromium-driver are not installed")
def test_web_ui_in_headless_chromium_uploads_asks_and_shows_plot(server):
    """The bundled example button, an upload, a question with the measurements beside the answer, a second ECG
    plotted beside the first and a comparison answered; the page looks as it did, with the example loaded and after
    the comparison (screenshots against stored ones, with a tolerance for font rendering)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    wait = WebDriverWait(driver, 60)

    def plotted():
        plot = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "img.ecgplot")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0)

    try:
        driver.get(server + "/")
        wait.until(lambda d: "model:" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "example").click()
        plotted()
        assert "heart_rate" in driver.find_element(By.ID, "plots").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web_ui.png"))
        assert_looks_like(ARTIFACTS / "web_ui.png", UI_REFERENCE)
        driver.find_element(By.ID, "ask").click()  # the example filled in a question
        answer = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chat .answer")))
        measured = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chat .m")))
        assert answer.text.strip() and measured.text.startswith("measured: HR ")
        driver.find_element(By.ID, "ecg1").send_keys(f"{HEA}\n{DAT}")  # an upload of the user's own files
        plotted()
        later = FIXTURES / "ptbxl/records100/00000/00002_lr"  # a second ECG: both are plotted, then compared
        driver.find_element(By.ID, "ecg2").send_keys(f"{later}.hea\n{later}.dat")

        def both_plotted(d):
            plots = d.find_elements(By.CSS_SELECTOR, "img.ecgplot")
            return len(plots) == 2 and all(
                d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p) > 0 for p in plots)

        wait.until(both_plotted)
        titles = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#plots h4")]
        assert titles[0].startswith("ECG 1: 12 leads") and titles[1].startswith("ECG 2: 12 leads"), titles
        question = driver.find_element(By.ID, "question")
        question.clear()
        question.send_keys("What changed?")
        driver.find_element(By.ID, "ask").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chat .answer")) == 2)
        wait.until(lambda d: any(m.text.startswith("ECG 2 measured: HR ")
                                 for m in d.find_elements(By.CSS_SELECTOR, "#chat .m")))
        driver.save_screenshot(str(ARTIFACTS / "web_ui_compared.png"))  # two plots, two answers, measurements
        assert_looks_like(ARTIFACTS / "web_ui_compared.png", UI_COMPARED_REFERENCE)
    finally:
        driver.quit()


UI_REFERENCE = FIXTURES / "ui/web_ui_example_loaded.png"
UI_COMPARED_REFERENCE = FIXTURES / "ui/web_ui_two_ecgs_compared.png"


def assert_looks_like(shot: Path, reference: Path, tolerance: float = 0.005) -> None:
    """Mean absolute difference of the two pages, grey and downscaled (so font antialiasing does not count, while
    a missing plot, table or panel does: blanking the plots gives 0.025, the chat panel 0.008; a re-run gives 0).
    ECGLLM_UPDATE_UI_REFERENCE=1 stores a new reference."""
    from PIL import Image

    if os.environ.get("ECGLLM_UPDATE_UI_REFERENCE"):
        reference.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, reference)
    small = [np.asarray(Image.open(p).convert("L").resize((350, 250), Image.BILINEAR), np.float32) / 255
             for p in (shot, reference)]
    difference = float(np.abs(small[0] - small[1]).mean())
    assert difference <= tolerance, f"the page looks different from {reference.name}: mean difference {difference:.3f}"


def test_serve_help_and_bad_api_key_env():
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "127.0.0.1" in result.stdout
    env = {k: v for k, v in os.environ.items() if k != "NOPE_KEY"}
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--api-key-env", "NOPE_KEY"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 3 and json.dumps("NOPE_KEY").strip('"') in result.stderr
    result = subprocess.run([sys.executable, "-m", "ecgllm.serving.cli", "serve", "--batches", "0"],
                            capture_output=True, text=True)
    assert result.returncode == 3 and "--batches must be 1 or more" in result.stderr


def test_the_real_model_stops_a_row_at_its_deadline_and_lets_the_others_go_on(assistant):
    """What the server's per-row deadlines do to the model's own generate: the row whose time is up stops at once
    (padding after its first token), the other runs to its token limit; the end-of-turn token is held back so that
    only a deadline or the limit can stop a row."""
    from transformers import StoppingCriteriaList

    from ecgllm import read_ecg
    from ecgllm.datasets.conversation import ecg_tags
    from ecgllm.models.answering import prompt_batch
    from ecgllm.serving.assistant import _RowDeadlines

    ecg = read_ecg(HEA)
    batch = prompt_batch(assistant.model, assistant.processor, ["Is this normal?"] * 2, [[ecg], [ecg]],
                         [ecg_tags(1, False)] * 2)
    now = time.monotonic()
    out = assistant.model.generate(**batch, max_new_tokens=40, min_new_tokens=40,
                                   pad_token_id=assistant.processor.tokenizer.pad_token_id,
                                   stopping_criteria=StoppingCriteriaList([_RowDeadlines([now - 1, now + 600])]))
    pad = assistant.processor.tokenizer.pad_token_id
    assert out.shape[1] == 40  # the live row ran to its limit
    assert (out[0, 1:] == pad).all() and not (out[1] == pad).all(), out


def test_a_timed_out_request_stops_its_generation_and_holds_its_slot_until_then(assistant, monkeypatch):
    import threading

    running, peak, lock = [0], [0], threading.Lock()

    def slow_generate(questions, ecg_lists, consecutive, max_new_tokens, max_time_s=None, **rows):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            started = time.monotonic()
            while max_time_s is None or time.monotonic() - started < max_time_s:  # honours the deadline, as generate
                time.sleep(0.01)
            return ["stopped"] * len(questions)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(assistant, "_generate", slow_generate)
    import concurrent.futures

    import httpx
    import uvicorn

    from ecgllm.serving.api import ServeSettings, create_app

    app = create_app(assistant, ServeSettings(request_timeout_s=1.5, workers=1, queue=8))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)  # one event loop, as `ecgllm serve` has
    thread.start()
    started = time.monotonic()
    while not server.started:
        assert time.monotonic() - started < 30 and thread.is_alive(), "the test server did not start"
        time.sleep(0.01)
    url = f"http://127.0.0.1:{server.config.port}/v1/ask"
    try:
        def one(_):
            return httpx.post(url, files=wfdb_files(), data={"question": "Rhythm?"}, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(one, range(4)))
    finally:
        server.should_exit = True
        thread.join(10)
    assert codes == [504] * 4, codes
    assert peak[0] == 1  # one worker: never two generations at once, even after a timeout
    assert running[0] == 0  # and every timed-out generation has stopped


def test_requests_that_used_to_reach_a_500_get_a_4xx_with_a_sentence(assistant):
    client = client_for(assistant)
    long_question = "Does this ECG show atrial fibrillation? " * 300  # over the model's 1,024-token context
    r = client.post("/v1/ask", files=wfdb_files(), data={"question": long_question})
    assert r.status_code == 422 and "shorten the question" in r.json()["detail"], r.text
    r = client.post("/v1/ask", content=b'{"question": "x?", "ecgs": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    huge = int("1" + "0" * 400)  # a JSON integer no float holds
    body = {"question": "x?", "ecgs": [{"signal": [[huge] * 10] * 12, "fs": 100, "leads": ["I"] * 12}]}
    assert client.post("/v1/ask", json=body).status_code == 422
    body = {"question": "x?", "ecgs": [{"signal": [[0.1] * 1000] * 12, "fs": huge, "leads": ["I"] * 12}]}
    assert client.post("/v1/ask", json=body).status_code == 422
    r = client.post("/v1/ask", files=[("ecg", ("x.dcm", b"not a dicom file"))], data={"question": "x?"})
    assert r.status_code == 422 and "ecgllm-upload" not in r.text  # no server path in the sentence
    r = client.post("/v1/ask", files=[("ecg", ("photo.png", _png()))], data={"question": "x?"})
    assert r.status_code == 422 and "image encoder" in r.json()["detail"]  # the tiny model reads signals only


def test_unknown_fields_wrong_content_types_and_broken_signals_get_a_422_with_a_sentence(assistant):
    client = client_for(assistant)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wave = (np.sin(np.linspace(0, 60, 1000)) * 0.5).round(4).tolist()
    ecg = {"signal": [wave] * 12, "fs": 100, "leads": leads}
    r = client.post("/v1/ask", json={"question": "x?", "ecgs": [ecg]})
    assert r.status_code == 200, r.text
    cases = [  # (endpoint, JSON body, words the sentence must hold)
        ("/v1/ask", {"question": "x?", "ecgs": [ecg], "questoin": "misspelt"}, "unknown field 'questoin'"),
        ("/v1/report", {"question": "x?", "ecgs": [ecg]}, "unknown field 'question'"),  # a report takes no question
        ("/v1/plot", {"ecgs": [ecg], "dpi": 300}, "unknown field 'dpi'"),
        ("/v1/ask", {"question": "x?", "ecgs": [{**ecg, "gain": 200}]}, "unknown field 'gain'"),
        ("/v1/ask", {"question": "x?", "ecgs": [{**ecg, "signal": [[float("nan")] * 1000] * 12}]}, "NaN"),
        ("/v1/ask", {"question": "x?", "ecgs": [{**ecg, "signal": [], "leads": []}]}, "2-D"),
        ("/v1/ask", {"question": "x?", "ecgs": [{**ecg, "fs": 0}]}, "sampling rate"),
        ("/v1/ask", {"question": "x?", "ecgs": [{**ecg, "fs": -100}]}, "sampling rate"),
        ("/v1/ask", {"question": "x?", "ecgs": [{**ecg, "signal": [wave] * 3}]}, "lead"),
    ]
    import json as json_module

    for path, body, words in cases:
        content = json_module.dumps(body).encode()  # NaN goes out as the bare word NaN, which JSON does not have
        r = client.post(path, content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422 and words in r.json()["detail"], (path, body.keys(), r.status_code, r.text)
    many_leads = {"question": "x?", "ecgs": [{"signal": [[0.1]] * 1_000_000, "fs": 100, "leads": ["I"] * 1_000_000}]}
    r = client.post("/v1/ask", json=many_leads)
    assert r.status_code in (413, 422) and r.json()["detail"], r.text
    r = client.post("/v1/ask", files=wfdb_files(), data={"question": "x?", "model": "other"})
    assert r.status_code == 422 and "unknown field 'model'" in r.json()["detail"]
    for kind, content in (("text/plain", b"Is this normal?"), ("application/xml", b"<ecg/>")):
        r = client.post("/v1/ask", content=content, headers={"content-type": kind})
        assert r.status_code == 422 and "multipart/form-data" in r.json()["detail"], r.text


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), "white").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("batches", [1, 2])
def test_questions_that_arrive_together_are_answered_in_one_batch(assistant, batches):
    """With ``batches=2`` two generate calls of the real model may run at once (tokeniser shared)."""
    import concurrent.futures
    import threading

    import httpx
    import uvicorn

    from ecgllm.serving.api import ServeSettings, create_app

    app = create_app(assistant, ServeSettings(max_new_tokens=4, batch_wait_s=0.2, batches=batches))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:
        assert time.monotonic() - started < 30 and thread.is_alive(), "the test server did not start"
        time.sleep(0.01)
    signal = (np.sin(np.linspace(0, 60, 1000))[None].repeat(12, 0) * 0.5).round(4).tolist()
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        def one(i):
            body = {"question": f"Is this normal? ({i})", "ecgs": [{"signal": signal, "fs": 100, "leads": leads}]}
            return httpx.post(url + "/v1/ask", json=body, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(8)))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # more than one batch's worth at once
            codes += list(pool.map(one, range(8, 24)))
        health = httpx.get(url + "/v1/health", timeout=10).json()
        recent = health["recent_batches"]  # what operators see
    finally:
        server.should_exit = True
        thread.join(10)
    assert codes == [200] * 24 and health["batches_at_once"] == batches and health["threads_per_batch"] >= 1
    assert sum(app.state.batcher.batches) == 24 and max(app.state.batcher.batches) > 1, app.state.batcher.batches
    assert recent == {"count": len(app.state.batcher.batches), "max_size": max(app.state.batcher.batches),
                      "mean_size": round(24 / len(app.state.batcher.batches), 2)}
