"""Choose and open a store from a database URL."""

from storegate.errors import StoreUnavailable
from storegate.settings import ConfigError, Settings
from storegate.store.base import Store
from storegate.store.sqlite import SQLiteStore

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> str:
    """`sqlite:///rel/path.db` is relative to the working directory, `sqlite:////abs/path.db` absolute."""
    path = url[len(SQLITE_PREFIX) :]
    if not path:
        raise ConfigError(f"no file path in database URL {url!r}")
    return path


def make_store(settings: Settings) -> Store:
    if settings.db.startswith(SQLITE_PREFIX):
        return SQLiteStore(
            sqlite_path(settings.db),
            synchronous=settings.sqlite_synchronous,
            cache_mib=settings.sqlite_cache_mib,
            queue_max=settings.write_queue_max,
            hang_timeout=settings.sqlite_writer_hang_timeout,
        )
    if settings.db.startswith(POSTGRES_PREFIXES):
        from storegate.store.postgres import PostgresStore

        return PostgresStore(settings.db)
    raise ConfigError(f"unsupported database URL {settings.db!r}: use sqlite:///path.db or postgresql://...")


async def open_store(settings: Settings) -> Store:
    store = make_store(settings)
    try:
        await store.open()
    except StoreUnavailable as exc:
        raise ConfigError(exc.message) from exc
    return store
