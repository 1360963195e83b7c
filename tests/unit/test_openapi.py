"""The served /openapi.json is OpenAI's spec plus our extensions, regenerated from ../shared/spec."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_openapi_matches_the_shared_spec() -> None:
    spec = importlib.util.spec_from_file_location("gen_openapi", ROOT / "scripts" / "gen_openapi.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "src" / "storegate" / "api" / "openapi.json").read_text()
    assert committed == module.render(), "run scripts/gen-openapi after the shared spec changed"
    doc = json.loads(committed)
    assert "created_after" in {p["name"] for p in doc["paths"]["/v1/chat/completions"]["get"]["parameters"]}
