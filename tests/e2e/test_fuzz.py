"""Fuzzing with schemathesis against the /openapi.json storegate serves: no 5xx, no hang, and every
response conforms to the spec (status codes, content types, bodies). A bounded run here; a longer one
with STOREGATE_FUZZ_EXAMPLES=500 scripts/test tests/e2e/test_fuzz.py."""

import os
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.server import Storegate

OPENAPI = Path(__file__).resolve().parents[2] / "src" / "storegate" / "api" / "openapi.json"
SCHEMA = schemathesis.openapi.from_path(str(OPENAPI))
EXAMPLES = int(os.environ.get("STOREGATE_FUZZ_EXAMPLES", "12"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]  # fmt: skip


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_conforms_to_its_spec(case: schemathesis.Case, server: Storegate) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)
