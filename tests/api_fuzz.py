"""Schemathesis against the REST API's own OpenAPI schema: requests generated for every operation (multipart
uploads of random files, JSON signals of any shape and value, OpenAI chat bodies with random content parts),
each answer checked for a server error, an undocumented status code or content type, and a body or headers that
break the schema. Shared by `tests/test_api_fuzz.py` (a bounded budget) and `benchmarks/bench_api_fuzz.py`."""

from __future__ import annotations

import time
from collections import Counter


def fuzz_api(app, examples_per_operation: int, seed: int = 0) -> dict:
    """Run the generated requests in-process (ASGI); returns per-operation counts, status codes and failures."""
    import schemathesis
    from hypothesis import HealthCheck, given, seed as hypothesis_seed, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                                   response_schema_conformance, status_code_conformance)

    # Semantic rules the schema cannot state ("a user message must hold an ECG") make schema-valid requests
    # rightly rejected, so the acceptance checks are left out; every check on what the server answers stays in.
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report: dict = {"operations": {}, "failures": [], "requests": 0}
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        statuses: Counter = Counter()

        @hypothesis_seed(seed)
        @settings(max_examples=examples_per_operation, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case) -> None:
            response = case.call()
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks)
            except Exception as exc:  # a failed check: recorded with its request, the run goes on
                report["failures"].append({"operation": operation.label, "status": response.status_code,
                                           "failure": str(exc).splitlines()[0][:300]})

        run()
        report["operations"][operation.label] = {"requests": sum(statuses.values()),
                                                 "statuses": {str(k): v for k, v in sorted(statuses.items())}}
        report["requests"] += sum(statuses.values())
    report["server_errors"] = sum(v for op in report["operations"].values()
                                  for code, v in op["statuses"].items() if int(code) >= 500
                                  and int(code) not in (503, 504))
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report
