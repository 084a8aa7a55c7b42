"""Shared by the benchmark scripts: run jobs in worker processes, print each result as a JSON line
as it arrives, and keep them all in OUT/results.json."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def run_all(fn: Callable[[Any], dict], jobs: Sequence[Any], workers: int, out: str | Path) -> list[dict]:
    rows = []
    with ProcessPoolExecutor(workers) as pool:
        for row in pool.map(fn, jobs):
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "results.json").write_text(json.dumps(rows, indent=1))
    return rows
