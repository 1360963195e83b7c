"""Settings: flags over environment over defaults, and the config file's backends and retention."""

from pathlib import Path

import pytest

from storegate.settings import OPENAI_URL, ConfigError, from_sources


def test_flags_win_over_environment_over_defaults() -> None:
    env = {"STOREGATE_PORT": "9000", "STOREGATE_STORE_DEFAULT": "true", "STOREGATE_RETENTION_DAYS": "7"}
    s = from_sources({"port": 9100}, env)
    assert (s.port, s.store_default, s.retention_days, s.host) == (9100, True, 7, "127.0.0.1")


def test_backend_defaults_to_openai_environment() -> None:
    s = from_sources({}, {"OPENAI_API_KEY": "sk-x"})
    assert s.backends[0].url == OPENAI_URL and s.backends[0].key == "sk-x"
    s = from_sources({}, {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1"})
    assert s.backends[0].url == "http://127.0.0.1:1/v1" and s.backends[0].key is None
    s = from_sources({"backend_url": "http://h/v1", "backend_key": "k"}, {"OPENAI_API_KEY": "sk-x"})
    assert (s.backends[0].url, s.backends[0].key) == ("http://h/v1", "k")
    # --backend-key is the key for whichever backend is the default one, OPENAI_BASE_URL's too
    s = from_sources(
        {"backend_key": "k"}, {"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "OPENAI_API_KEY": "sk-x"}
    )
    assert (s.backends[0].url, s.backends[0].key) == ("http://127.0.0.1:1/v1", "k")
    s = from_sources({}, {"STOREGATE_BACKEND_KEY": "k"})
    assert (s.backends[0].url, s.backends[0].key) == (OPENAI_URL, "k")


def test_config_file_backends_and_retention(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[backends]]\nname = "a"\nurl = "http://a/v1/"\nmodels = ["x", "y*"]\npass_store = true\n'
        '[[backends]]\nurl = "https://b/v1"\nkey_env = "B_KEY"\n'
        "[retention.projects]\nteam = 3\n"
    )
    s = from_sources({"config": str(path)}, {})
    a, b = s.backends
    assert (a.name, a.url, a.models, a.pass_store) == ("a", "http://a/v1", ("x", "y*"), True)
    assert (b.name, b.models, b.pass_store) == ("backend1", None, False)
    assert s.retention_projects == (("team", 3),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[[backends]]\nurl = "ftp://x"\n',
        '[[backends]]\nurl = "http://x"\nmodels = "x"\n',
        '[[backends]]\nurl = "http://x"\nextra = 1\n',
        '[[backends]]\nurl = "http://x"\n[retention.projects]\nteam = 0\n',
        '[[backends]]\nurl = "http://x"\n[other]\n',
        "not toml [",
    ],
)
def test_bad_config_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        from_sources({"config": str(path)}, {})


@pytest.mark.parametrize("url", ["ftp://x", "x:8000", "http://", "http://x:port", "localhost:8000/v1"])
def test_a_backend_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="http"):
        from_sources({"backend_url": url}, {})
    with pytest.raises(ConfigError, match="http"):
        from_sources({}, {"OPENAI_BASE_URL": url})


@pytest.mark.parametrize("value", ["FULL", "extra", "NORMAL"])
def test_sqlite_synchronous_takes_the_levels_that_sync(value: str) -> None:
    assert from_sources({}, {"STOREGATE_SQLITE_SYNCHRONOUS": value}).sqlite_synchronous == value


def test_a_backend_url_loses_its_trailing_slash() -> None:
    assert from_sources({"backend_url": "http://x:8000/v1/"}, {}).backends[0].url == "http://x:8000/v1"


@pytest.mark.parametrize("env", [{"STOREGATE_PORT": "x"}, {"STOREGATE_RETENTION_DAYS": "0"},
                                 {"STOREGATE_SQLITE_SYNCHRONOUS": "SOMETIMES"}, {"STOREGATE_SQLITE_SYNCHRONOUS": "off"},
                                 {"STOREGATE_EVENT_LOOP": "tokio"},
                                 {"STOREGATE_SQLITE_WRITER_HANG_TIMEOUT": "0.5"},
                                 {"STOREGATE_SQLITE_WRITER_HANG_TIMEOUT": "nan"},
                                 {"STOREGATE_SQLITE_WRITER_HANG_TIMEOUT": "inf"}])  # fmt: skip
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        from_sources({}, env)
