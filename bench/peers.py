"""LiteLLM's proxy as the peer baseline: its venv (bench/.venv-litellm), config and offline switches.

The proxy runs one uvicorn worker, no database (so it stores nothing), no master key (its cheapest
auth path: every request is accepted), logging off as far as it goes (uvicorn access log off,
LiteLLM's own loggers at ERROR, no callbacks, message logging off) and offline: every remote
resource it knows (model cost map, Anthropic beta headers, autorouter presets, blog posts, policy
templates) is read from its bundled copy, telemetry is disabled, .env files are not read, and
HTTP(S)_PROXY points at a closed local port (NO_PROXY covers 127.0.0.1) so that anything else that
tried to reach the internet would fail at once instead of leaving the box.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
LITELLM_VENV = HERE / ".venv-litellm"
LITELLM_BIN = LITELLM_VENV / "bin" / "litellm"
MODEL = "bench-model"

OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_MODE": "PRODUCTION",  # do not load a .env file found around the install
    "LITELLM_LOG": "ERROR",
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}

CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: http://127.0.0.1:{port}/v1
      api_key: x
litellm_settings:
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
  callbacks: []
  success_callback: []
  failure_callback: []
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
  disable_spend_updates: true
  disable_reset_budget: true
  background_health_checks: false
"""

# uvicorn dictConfig: errors only, no access log.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "level": "ERROR"}},
    "loggers": {
        "uvicorn": {"handlers": ["err"], "level": "ERROR", "propagate": False},
        "uvicorn.error": {"handlers": ["err"], "level": "ERROR", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    },
}


# Read by LiteLLM to find a database: unset in the harness's own environment (it does not use them),
# so the proxy starts without one whatever the caller's shell holds.
UNSET_ENV = ("DATABASE_URL", "DIRECT_URL", "DATABASE_HOST", "LITELLM_MASTER_KEY")


def available() -> bool:
    return LITELLM_BIN.exists()


def litellm_argv_env(tmp: Path, port: int, backend_port: int) -> tuple[list[str], dict[str, str], str]:
    """argv, extra environment, and the config text for one LiteLLM proxy process."""
    config = CONFIG.format(model=MODEL, port=backend_port)
    cfg = tmp / "litellm-config.yaml"
    cfg.write_text(config)
    log_cfg = tmp / "litellm-log-config.json"
    log_cfg.write_text(json.dumps(LOG_CONFIG))
    argv = [str(LITELLM_BIN), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--log_config", str(log_cfg)]  # fmt: skip
    return argv, dict(OFFLINE_ENV), config


def litellm_version() -> str | None:
    for d in (LITELLM_VENV / "lib").glob("python*/site-packages/litellm-*.dist-info"):
        return d.name.removeprefix("litellm-").removesuffix(".dist-info")
    return None
