"""The access log writes every line of an event-loop pass in one write, at the end of that pass."""

import asyncio
import io
import logging
import os
from pathlib import Path

import pytest

from storegate.api.accesslog import AccessLog


def test_lines_of_a_pass_land_together_in_order_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = (tmp_path / "stderr").open("w")
    monkeypatch.setattr("sys.stderr", out)

    async def main() -> None:
        access = AccessLog()
        for i in range(3):
            access.add(b'{"n":%d}' % i)
        assert (tmp_path / "stderr").read_bytes() == b"", "nothing is written mid-pass"
        await asyncio.sleep(0)
        assert (tmp_path / "stderr").read_bytes() == b'{"n":0}\n{"n":1}\n{"n":2}\n'
        access.add(b'{"n":3}')
        access.flush()  # what shutdown does
        await asyncio.sleep(0)  # the scheduled flush then finds nothing left
        assert (tmp_path / "stderr").read_bytes().count(b'{"n":3}') == 1

    try:
        asyncio.run(main())
    finally:
        out.close()


def test_a_stderr_without_a_file_gets_the_lines_through_logging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())

    async def main() -> None:
        access = AccessLog()
        access.add(b'{"n":1}')
        await asyncio.sleep(0)

    with caplog.at_level(logging.INFO, logger="storegate.access"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records] == ['{"n":1}']


def test_a_closed_stderr_drops_lines_without_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = os.open(tmp_path / "gone", os.O_WRONLY | os.O_CREAT)
    os.close(fd)  # writing to it now fails with EBADF

    class Gone:
        def fileno(self) -> int:
            return fd

    monkeypatch.setattr("sys.stderr", Gone())

    async def main() -> None:
        access = AccessLog()
        access.add(b"x")
        await asyncio.sleep(0)
        access.add(b"y")  # and it goes on accepting lines
        await asyncio.sleep(0)

    asyncio.run(main())


def test_the_level_comes_from_logging() -> None:
    logger = logging.getLogger("storegate.access")
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert not AccessLog.enabled()
        logger.setLevel(logging.INFO)
        assert AccessLog.enabled()
    finally:
        logger.setLevel(before)
