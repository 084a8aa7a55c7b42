"""Shared by the benchmark scripts: run jobs in worker processes, print each result as a JSON line
as it arrives, and keep them all in OUT/results.json; time the trainer."""
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


def training_rate(model: Any, data: Any, config: Any, repeats: int = 3) -> float:
    """Training examples per second of ``Trainer(model, data, config).fit()``: the median of
    ``repeats`` runs after a warm-up run; ``config`` limits the steps (max_steps_per_epoch or a small
    ``data``)."""
    import statistics
    import time

    from dgm.train.trainer import Trainer

    times, steps = [], 0
    for i in range(repeats + 1):
        trainer = Trainer(model, data, config)
        start = time.perf_counter()
        trainer.fit()
        if i:  # the first run warms up
            times.append(time.perf_counter() - start)
        steps = trainer.steps_per_epoch * config.epochs
    return steps * config.batch_size / statistics.median(times)
