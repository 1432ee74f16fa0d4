"""Schema fuzzing of the OpenAPI document, bounded for the normal suite (scripts/fuzz.py runs
longer): no 5xx and every error an OpenAI envelope."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from tests.fuzzing import check_response, fuzz_schema

schema = fuzz_schema(max_examples=60, seed=20261123)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_5xx_and_errors_are_envelopes(case):
    response = case.call()
    content_type = (response.headers.get("content-type") or [""])[0]  # lists of values
    check_response(response.status_code, content_type, response.content)
