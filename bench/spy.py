"""py-spy profiles of a storegate process while a missed target's load runs again.

`py-spy record --format raw` writes collapsed stacks ("frame;frame;... count"); we keep the top
frames by own time (where the CPU goes) and by inclusive time restricted to storegate's own code
(which of our functions the time is spent under), the share of each thread (the event loop, the
SQLite reader thread, and storegate's SQLite writer process: py-spy follows subprocesses), plus the
raw file in the run's results. Percentages are of all
samples of all threads; py-spy samples a thread only while it is not idle. Own time in the
outermost frame (`run_app (aiohttp/web.py)`) is time in uvloop's C event loop itself (socket
reads and writes, polling, callbacks' C parts), which has no Python frame of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def py_spy() -> str | None:
    for cand in (HERE / ".venv-tools" / "bin" / "py-spy", REPO / ".venv" / "bin" / "py-spy"):
        if cand.exists():
            return str(cand)
    return shutil.which("py-spy")


class Recorder:
    """py-spy record on one PID for `seconds`, in the background (start, then join)."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 250) -> None:
        self.pid = pid
        self.seconds = seconds
        self.out = out
        self.rate = rate
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        exe = py_spy()
        if exe is None:
            self.error = "py-spy not installed"
            return
        argv = [exe, "record", "-p", str(self.pid), "-d", str(max(1, round(self.seconds))), "-r", str(self.rate),
                "-f", "raw", "-o", str(self.out), "--nonblocking", "--threads", "--subprocesses"]  # fmt: skip

        def run() -> None:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=self.seconds + 60, check=False)
            if out.returncode != 0:
                self.error = f"py-spy rc={out.returncode}: {out.stderr[-400:]}"

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def join(self) -> dict[str, Any]:
        if self._thread is not None:
            self._thread.join(self.seconds + 90)
        if self.error or not self.out.exists():
            return {"error": self.error or "no profile written"}
        return summarise(self.out)


def _short(frame: str) -> str:
    """py-spy prints short file names already ("aiohttp/web.py", "storegate/store/sqlite.py")."""
    return frame


def _function(frame: str) -> str:
    """'f (file.py:12)' -> 'f (file.py)': inclusive time adds up over a function's lines."""
    head, _, where = frame.rpartition(":")
    return head + ")" if where.rstrip(")").isdigit() else frame


def _is_ours(frame: str) -> bool:
    return " (storegate/" in frame and "storegate/__main__.py" not in frame and "storegate/cli/" not in frame


def summarise(path: Path, top: int = 12) -> dict[str, Any]:
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        # --subprocesses: 'process PID:"argv"' first, then the child's, if a child's stack
        procs = 0
        while procs < len(frames) - 1 and frames[procs].startswith("process "):
            procs += 1
        writer = any("sqlite_writer" in f for f in frames[:procs])
        frames = frames[procs:]
        if writer:
            threads["SQLite writer process"] += n
            frames = frames[1:] if frames[0].startswith("thread (") and len(frames) > 1 else frames
        elif frames[0].startswith("thread ("):
            name = frames[0].split(": ", 1)[-1]
            threads["event loop (MainThread)" if name == "MainThread" else f"thread {name}"] += n
            frames = frames[1:] or frames
        own[_short(frames[-1])] += n
        for f in {_function(x) for x in frames if _is_ours(x)}:
            ours[f] += n
    if total == 0:
        return {"samples": 0, "own": [], "storegate_inclusive": [], "threads": []}
    return {
        "samples": total,
        "threads": [{"thread": t, "pct": round(100 * c / total, 1)} for t, c in threads.most_common()],
        "own": [{"frame": f, "pct": round(100 * c / total, 1)} for f, c in own.most_common(top)],
        "storegate_inclusive": [{"frame": f, "pct": round(100 * c / total, 1)} for f, c in ours.most_common(top)],
        "raw_file": path.name,
    }
