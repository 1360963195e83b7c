"""Does storing a completion cost more as the SQLite store grows? (bench/analysis/2026-11-27T1327Z.md)

    .venv/bin/python bench/insert_growth.py [--blocks 24]

In one process, no server: stores completions through `SQLiteStore.insert` on a fresh file, 64 at
a time (as concurrent creates reach the writer), each with a ~650-byte body, its request, two
messages and two metadata tags like the bench's, and prints the wall time and this process's CPU
per insert for every block of ~5,000. Measured 2026-11-27: 123-171 us of CPU per insert, no trend
from 5k to 120k rows. Nothing here is judged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from storegate.ids import IdMinter  # noqa: E402
from storegate.store.base import NewCompletion  # noqa: E402
from storegate.store.sqlite import SQLiteStore  # noqa: E402

BATCH = 64
PER_BLOCK = 5000 // BATCH * BATCH
BODY = orjson.dumps({
    "object": "chat.completion", "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 500},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 100, "total_tokens": 110},
})  # fmt: skip
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is in this image? Describe it in one sentence."}]  # fmt: skip
REQUEST = orjson.dumps({"model": "bench-model", "messages": MESSAGES, "store": True,
                        "metadata": {"user": "u7", "env": "staging"}})  # fmt: skip


def record(minter: IdMinter, k: int) -> NewCompletion:
    cid, created = minter.mint()
    return NewCompletion(project="default", id=cid, created=created, model="bench-model",
                         response_model="bench-model", backend="bench", backend_id="x", incomplete=False,
                         metadata={"user": f"u{k % 100}", "env": "staging"},
                         body=b'{"id":"' + cid.encode() + b'",' + BODY[1:], request=REQUEST,
                         messages=[orjson.dumps(m) for m in MESSAGES])  # fmt: skip


async def main(blocks: int) -> None:
    minter = IdMinter()
    with tempfile.TemporaryDirectory(prefix="storegate-growth-") as tmp:
        store = SQLiteStore(str(Path(tmp) / "growth.db"))
        await store.open()
        try:
            k = 0
            for _ in range(blocks):
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(PER_BLOCK // BATCH):
                    await asyncio.gather(*(store.insert(record(minter, k + i)) for i in range(BATCH)))
                    k += BATCH
                wall_us = (time.perf_counter() - wall) * 1e6 / PER_BLOCK
                cpu_us = (time.process_time() - cpu) * 1e6 / PER_BLOCK
                print(f"rows {k:7,d}: {wall_us:5.0f} us wall, {cpu_us:5.0f} us CPU per insert", flush=True)
        finally:
            await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=24, help="blocks of ~5,000 inserts")
    asyncio.run(main(ap.parse_args().blocks))
