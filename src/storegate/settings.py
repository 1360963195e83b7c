"""Every setting, its environment variable and its default; the config file's backends.

Settings are built once (from flags, environment and file) and passed down; nothing reads the
environment after start-up.
"""

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

OPENAI_URL = "https://api.openai.com/v1"


class ConfigError(ValueError):
    """A setting or the config file is wrong; the command exits with this message."""


EVENT_LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One model backend. `models` lists the models it serves (glob patterns allowed); None serves
    any model no other backend claims. `pass_store` forwards `store` and `metadata` to it;
    `pass_client_key` sends it the client's own Authorization (only while storegate has no keys)."""

    name: str
    url: str
    key: str | None = None
    models: tuple[str, ...] | None = None
    pass_store: bool = False
    pass_client_key: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"env": "STOREGATE_HOST"})
    port: int = field(default=8000, metadata={"env": "STOREGATE_PORT"})
    db: str = field(default="sqlite:///./storegate.db", metadata={"env": "STOREGATE_DB"})
    backend_url: str | None = field(default=None, metadata={"env": "STOREGATE_BACKEND_URL"})
    backend_key: str | None = field(default=None, metadata={"env": "STOREGATE_BACKEND_KEY"})
    config: str | None = field(default=None, metadata={"env": "STOREGATE_CONFIG"})
    store_default: bool = field(default=False, metadata={"env": "STOREGATE_STORE_DEFAULT"})
    max_body_bytes: int = field(default=16 * 1024 * 1024, metadata={"env": "STOREGATE_MAX_BODY_BYTES"})
    backend_connect_timeout: float = field(
        default=10.0, metadata={"env": "STOREGATE_BACKEND_CONNECT_TIMEOUT"}
    )
    backend_read_timeout: float = field(default=600.0, metadata={"env": "STOREGATE_BACKEND_READ_TIMEOUT"})
    backend_total_timeout: float | None = field(
        default=None, metadata={"env": "STOREGATE_BACKEND_TOTAL_TIMEOUT"}
    )
    max_inflight: int = field(default=1000, metadata={"env": "STOREGATE_MAX_INFLIGHT"})
    sqlite_synchronous: str = field(default="FULL", metadata={"env": "STOREGATE_SQLITE_SYNCHRONOUS"})
    sqlite_cache_mib: int = field(default=64, metadata={"env": "STOREGATE_SQLITE_CACHE_MIB"})
    event_loop: str = field(default="uvloop", metadata={"env": "STOREGATE_EVENT_LOOP"})
    write_queue_max: int = field(default=10_000, metadata={"env": "STOREGATE_WRITE_QUEUE_MAX"})
    sqlite_writer_hang_timeout: float = field(
        default=30.0, metadata={"env": "STOREGATE_SQLITE_WRITER_HANG_TIMEOUT"}
    )
    shutdown_timeout: float = field(default=30.0, metadata={"env": "STOREGATE_SHUTDOWN_TIMEOUT"})
    rate_limit_rpm: int = field(default=0, metadata={"env": "STOREGATE_RATE_LIMIT_RPM"})
    body_timeout: float = field(default=30.0, metadata={"env": "STOREGATE_BODY_TIMEOUT"})
    insecure_no_auth: bool = field(default=False, metadata={"env": "STOREGATE_INSECURE_NO_AUTH"})
    retention_days: int | None = field(default=None, metadata={"env": "STOREGATE_RETENTION_DAYS"})
    retention_interval: float = field(default=60.0, metadata={"env": "STOREGATE_RETENTION_INTERVAL"})
    backends: tuple[BackendConfig, ...] = ()
    retention_projects: tuple[tuple[str, int], ...] = ()

    def with_backends(self, environ: Mapping[str, str]) -> "Settings":
        """Resolve the backends: the config file's, else --backend, else OPENAI_BASE_URL / OpenAI."""
        retention = self.retention_projects
        if self.config:
            backends = load_backends(Path(self.config))
            retention = load_retention(Path(self.config))
        elif self.backend_url:
            url = _http_url(self.backend_url, "--backend / STOREGATE_BACKEND_URL")
            backends = (BackendConfig(name="default", url=url, key=self.backend_key),)
        else:
            url = _http_url(environ.get("OPENAI_BASE_URL") or OPENAI_URL, "OPENAI_BASE_URL")
            key = self.backend_key or environ.get("OPENAI_API_KEY")  # --backend-key wins, as everywhere
            backends = (BackendConfig(name="default", url=url, key=key),)
        return _replace(self, backends=backends, retention_projects=retention)


def env_var(name: str) -> str | None:
    for f in fields(Settings):
        if f.name == name:
            env = f.metadata.get("env")
            return str(env) if env else None
    return None


def from_sources(overrides: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = f.metadata.get("env")
        if overrides.get(f.name) is not None:
            values[f.name] = overrides[f.name]
        elif env and env in environ:
            values[f.name] = _parse(f.name, f.type, environ[env])
    settings = Settings(**values)
    # Not OFF: it never syncs, so a power loss or an OS crash can corrupt the file, not only lose the
    # last commits (NORMAL's risk in WAL mode).
    if settings.sqlite_synchronous.upper() not in {"NORMAL", "FULL", "EXTRA"}:
        raise ConfigError("sqlite_synchronous must be FULL, EXTRA or NORMAL (OFF is refused: it can corrupt"
                          " the file on a power loss)")  # fmt: skip
    if settings.sqlite_cache_mib < 1:
        raise ConfigError("sqlite_cache_mib must be at least 1")
    if settings.event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}")
    if settings.retention_days is not None and settings.retention_days < 1:
        raise ConfigError(
            "retention_days must be at least 1 (leave it unset to keep completions until deleted)"
        )
    if settings.max_inflight < 1:
        raise ConfigError("max_inflight must be at least 1")
    if settings.retention_interval <= 0:
        raise ConfigError("retention_interval must be positive")
    if not 1 <= settings.sqlite_writer_hang_timeout < math.inf:  # (below, a loop's jitter makes looks late)
        raise ConfigError("sqlite_writer_hang_timeout must be a number of seconds, at least 1")
    return settings.with_backends(environ)


def _parse(name: str, type_: Any, raw: str) -> Any:
    kind = getattr(type_, "__name__", str(type_))
    try:
        if type_ is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if type_ is int or type_ == int | None:
            return int(raw)
        if type_ is float or type_ == float | None:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{env_var(name)}: cannot read {raw!r} as {kind}") from None
    return raw


def _replace(settings: Settings, **changes: Any) -> Settings:
    values = {f.name: getattr(settings, f.name) for f in fields(Settings)}
    values.update(changes)
    return Settings(**values)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None


def load_retention(path: Path) -> tuple[tuple[str, int], ...]:
    """`[retention.projects]` in the config file: project name = days, overriding --retention-days."""
    section = _read(path).get("retention", {})
    if not isinstance(section, dict) or set(section) - {"projects"}:
        raise ConfigError(f"{path}: [retention] takes only a [retention.projects] table")
    projects = section.get("projects", {})
    if not isinstance(projects, dict):
        raise ConfigError(f"{path}: [retention.projects] must be a table of project = days")
    for name, days in projects.items():
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise ConfigError(f"{path}: retention for project {name!r} must be a whole number of days >= 1")
    return tuple(sorted(projects.items()))


def _http_url(url: str, where: str) -> str:
    """A backend's base URL: http(s) with a host (streams connect to it themselves), no trailing /."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} must be an http(s) URL with a host, not {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise ConfigError(f"{where} has an invalid port: {url!r}") from None
    return url.rstrip("/")


def load_backends(path: Path) -> tuple[BackendConfig, ...]:
    doc = _read(path)
    unknown_sections = set(doc) - {"backends", "retention"}
    if unknown_sections:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown_sections)}")
    entries = doc.get("backends")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: needs at least one [[backends]] table")
    backends = [_backend(path, i, entry) for i, entry in enumerate(entries)]
    names = [b.name for b in backends]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: backend names must be unique")
    return tuple(backends)


def _backend(path: Path, index: int, entry: Any) -> BackendConfig:
    where = f"{path}: backends[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(entry) - {"name", "url", "key", "key_env", "models", "pass_store", "pass_client_key"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    url = entry.get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be an http(s) URL")
    url = _http_url(url, f"{where}: url")
    key = entry.get("key")
    if "key_env" in entry:
        key = os.environ.get(str(entry["key_env"]))
    models = entry.get("models")
    if models is not None and (
        not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
    ):
        raise ConfigError(f"{where}: models must be a list of model names")
    pass_store = entry.get("pass_store", False)
    pass_client_key = entry.get("pass_client_key", False)
    for name, value in (("pass_store", pass_store), ("pass_client_key", pass_client_key)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false")
    return BackendConfig(
        name=str(entry.get("name") or f"backend{index}"),
        url=url,
        key=key if isinstance(key, str) and key else None,
        models=tuple(models) if models is not None else None,
        pass_store=pass_store,
        pass_client_key=pass_client_key,
    )
