"""Schemathesis at a larger scale than the test suite, against the shipped model by default: generated requests
for every operation of the REST API, each answer checked (no 5xx; status codes, content types, bodies and headers
as the OpenAPI schema says).

    python benchmarks/bench_api_fuzz.py [--examples 1000] [--model DIR]   -> benchmarks/results/api_fuzz.json
"""

from __future__ import annotations

import argparse
import sys

from common import ROOT, environment, write_result

sys.path.insert(0, str(ROOT))
from tests.api_fuzz import fuzz_api  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1000, help="generated requests per operation (at most)")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from ecgllm import ECGAssistant
    from ecgllm.serving.api import ServeSettings, create_app

    assistant = ECGAssistant.load(args.model)
    report = fuzz_api(create_app(assistant, ServeSettings(max_new_tokens=8)), args.examples, args.seed)
    path = write_result("api_fuzz.json", {"model": assistant.name, "examples_per_operation": args.examples,
                                          "seed": args.seed, **report, "environment": environment()})
    print(f"{report['requests']} requests, {report['server_errors']} server errors, "
          f"{len(report['failures'])} schema failures in {report['seconds']:.0f} s -> {path}")


if __name__ == "__main__":
    main()
