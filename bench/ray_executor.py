"""What the Ray executor costs and buys on one machine: the tests' tiny study (3 trainings, 3 attacks)
with the local executor, and with Ray on 1 and 2 workers, each into a fresh folder, in one process.

    python -m bench.ray_executor                      # the tiny study (5 attack iterations per cell)
    python -m bench.ray_executor --iterations 400     # longer cells: the overhead is a smaller share

Wall time includes starting (and stopping) the local Ray instance: that is what a user waits for.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, save


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=5, help="attack iterations per cell")
    args = p.parse_args()

    import torch

    from studies.executors import REGISTRY as EXECUTORS, ExecutorOptions
    from studies.runner import StudyRunner
    from tests.test_studies import tiny_quick

    torch.set_num_threads(1)  # what a Ray cell with resources.cpus: 1 gets
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in (("local", 0), ("ray", 1), ("ray", 2)):
            spec = tiny_quick(ROOT / "configs" / "studies" / "sigma0.yaml", Path(tmp) / f"{name}{workers}")
            spec.attack.overrides = {**spec.attack.overrides, "optim.iterations": args.iterations}
            runner = StudyRunner(spec, progress=False)
            started = time.perf_counter()
            runner.run(executor=EXECUTORS.get(name)(ExecutorOptions(workers=workers)))
            seconds = time.perf_counter() - started
            cells = runner.trainings_run + runner.attacks_run
            rows.append({"executor": name, "workers": workers or 1, "cells": cells, "wall_s": round(seconds, 1)})
            print(rows[-1], flush=True)
    local = rows[0]["wall_s"]
    save(f"ray_executor_it{args.iterations}", {
        "iterations": args.iterations, "rows": rows,
        "ray1_over_local": round(rows[1]["wall_s"] / local, 2), "ray2_over_local": round(rows[2]["wall_s"] / local, 2),
        "ray1_overhead_per_cell_s": round((rows[1]["wall_s"] - local) / rows[1]["cells"], 2),
        "ray2_over_ray1": round(rows[2]["wall_s"] / rows[1]["wall_s"], 2),
    })


if __name__ == "__main__":
    main()
