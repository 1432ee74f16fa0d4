"""Long schema-fuzzing runs: `python scripts/fuzz.py --examples 2000` (from the repo root).

The normal test suite (tests/test_fuzz.py) runs a few hundred cases; this runs as many as asked,
against the ASGI app with the FakeEngine (no model needed), and prints what came back per route,
status and error code. It exits 1 at the first 5xx or malformed error, printing the request.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.fuzzing import check_response, fuzz_schema  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per operation")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default random)")
    args = parser.parse_args(argv)

    schema = fuzz_schema(args.examples, seed=args.seed)
    seen: collections.Counter[tuple[str, int, str]] = collections.Counter()
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=args.examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case):
            label = case.operation.label
            response = case.call()
            content_type = (response.headers.get("content-type") or [""])[0]
            try:
                check_response(response.status_code, content_type, response.content)
            except AssertionError:
                print(f"FAILED {label}: body={case.body!r:.2000}", file=sys.stderr)
                raise
            code = ""
            if response.status_code >= 400:
                code = response.json()["error"]["code"] or "-"
            seen[(label, response.status_code, code)] += 1

        try:
            run()
        except AssertionError as exc:
            print(f"contract broken: {exc}", file=sys.stderr)
            return 1
    total = sum(seen.values())
    print(
        f"{total} requests in {time.perf_counter() - started:.1f} s; no 5xx, every error an envelope"
    )
    for (label, status, code), count in sorted(seen.items()):
        print(f"{count:7d}  {status}  {label}  {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
