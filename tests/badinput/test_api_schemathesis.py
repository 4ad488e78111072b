"""schemathesis against ``/api/v1/openapi.json``: the JSON API must keep the promises its document makes.

The document is loaded from the running Flask app (WSGI, in-process) and every operation is fuzzed
with schemathesis's hypothesis strategies, positive (data the document allows) and negative (data
it forbids), as the admin (every route allowed) with a real bearer token, on the real database
seeded with a flagged call, a patient and baseline contributions, so generated ids sometimes hit
real rows. Checks: no 5xx, every status and content type is one the document lists, and every body
validates against its response schema.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err, Ok

from tests.dashboard_fixtures import DashUsers, Seed, bearer
from tests.reliability import ReliabilityRecorder

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# x 11 operations x 2 modes: well under a minute on the real database
EXAMPLES_PER_OPERATION = int(os.environ.get("PAINLINE_SCHEMATHESIS_EXAMPLES", "25"))


T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def _ok(result: Ok[T] | Err[E]) -> T:
    """The value, or the error raised (an operation the document fails to describe)."""
    if isinstance(result, Err):
        raise result.err()
    return result.ok()


def seeded_ids(seed: Seed) -> dict[str, list[int]]:
    """Path parameter values that exist, so 200 responses (and their schemas) get exercised too."""
    return {
        "call_id": [seed.call_id, seed.live_call_id],
        "flag_id": [seed.flag_id],
        "patient_id": [seed.patient_id],
        "contribution_id": seed.contribution_ids,
    }


def fuzz_operation(
    operation: Any,
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
    known: dict[str, list[int]],
    statuses: dict[str, int],
) -> str | None:
    """Run one operation's cases in one generation mode; the failure text, or None.

    Positive cases must pass every check; negative cases (data the document forbids) may be refused
    with any status, but never a 5xx and never in a content type the document does not list.
    """
    names = [p.name for p in operation.path_parameters if p.name in known]
    seeded = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
    positive = mode is schemathesis.GenerationMode.POSITIVE
    checks = CHECKS if positive else [not_a_server_error, content_type_conformance]

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode), use_seed=st.booleans(), seeded_params=seeded)
    def run(case: Any, use_seed: bool, seeded_params: dict[str, Any]) -> None:
        if use_seed and seeded_params and positive:
            case.path_parameters = {**(case.path_parameters or {}), **seeded_params}
        response = case.call(headers=headers)
        key = f"{operation.method.upper()} {operation.path} {response.status_code}"
        statuses[key] = statuses.get(key, 0) + 1
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # collected: one run reports every operation that fails
        return f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
    return None


def test_api_conforms_to_its_openapi_document(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed, reliability: ReliabilityRecorder
) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", dash_app)
    headers = bearer(dash_users.tokens["admin"])
    known = seeded_ids(dash_seed)
    operations = [_ok(result) for result in schema.get_all_operations()]
    statuses: dict[str, int] = {}
    failures = [
        failure
        for operation in operations
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
        if (failure := fuzz_operation(operation, mode, headers, known, statuses)) is not None
    ]
    reliability.record_outcome(
        "bad-input-api-schemathesis",
        "bad input",
        "schemathesis (positive and negative) on every /api/v1 operation in-process with an admin bearer token: "
        "not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance",
        survived=not failures,
        operations=len(operations),
        calls=sum(statuses.values()),
        failures=len(failures),
    )
    assert len(operations) >= 11
    assert not failures, "\n\n".join(failures)
    # the seeded ids made the success paths (and their response schemas) part of the run
    assert any(key.endswith((" 200", " 202")) and "{" in key for key in statuses), statuses
