"""Schemathesis over every operation of the REST API (fixed seed, bounded budget; `benchmarks/bench_api_fuzz.py`
runs more): no 5xx, and every answer fits the published schema (status codes, content types, bodies)."""

from __future__ import annotations

import os

from tests.api_fuzz import fuzz_api

EXAMPLES = int(os.environ.get("ECGLLM_API_FUZZ_EXAMPLES", "300"))


def test_generated_requests_never_get_a_5xx_or_an_answer_outside_the_schema(tiny_checkpoint):
    from ecgllm import ECGAssistant
    from ecgllm.serving.api import ServeSettings, create_app

    app = create_app(ECGAssistant.load(tiny_checkpoint), ServeSettings(max_new_tokens=4))
    report = fuzz_api(app, EXAMPLES)
    posts = [op for op in report["operations"] if op.startswith("POST")]
    assert set(posts) == {"POST /v1/ask", "POST /v1/report", "POST /v1/plot", "POST /v1/chat/completions"}
    assert report["requests"] >= 1000, report["operations"]  # the floor, whatever ECGLLM_API_FUZZ_EXAMPLES says
    assert report["server_errors"] == 0 and not report["failures"], report["failures"][:10]
    for op in posts:  # every operation gets some requests through to an answer, not only to validation
        assert report["operations"][op]["statuses"].get("200", 0) > 0, report["operations"]
