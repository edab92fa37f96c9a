"""Side-effect counters shared by the test process and worker processes.

Each call of ``mark(key)`` appends one line (the worker's pid and times) to a
file, so a test can count how often a step's code really ran, and where.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _dir() -> Path:
    path = Path(os.environ["STEPFLOWS_TEST_MARKS"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def mark(key: str, note: str = "") -> int:
    """Record one occurrence of ``key``; returns how many there were before it."""
    before = count(key)
    with open(_dir() / key, "a") as f:
        f.write(f"{os.getpid()} {time.time():.6f} {note}\n")
    return before


def count(key: str) -> int:
    try:
        return len((_dir() / key).read_text().splitlines())
    except FileNotFoundError:
        return 0


def lines(key: str) -> list[list[str]]:
    try:
        return [line.split(" ", 2) for line in (_dir() / key).read_text().splitlines()]
    except FileNotFoundError:
        return []
