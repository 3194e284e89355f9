"""Peak and per-round resident memory of one train.py run (a subprocess, sampled every second).

    python -m bench.train_memory -- fl.rounds=12 'privacy.filters=[{name: dp_gaussian, clip_norm: 2, noise_multiplier: 2, noise: local, parts: all}]'

A run must not grow with the number of rounds: what a round allocates is freed before the next one.
Reported: the peak RSS, and the RSS at 1/4, 1/2, 3/4 and the end of the run (flat = no growth).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="train.py overrides")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), *args.overrides, "logging.progress=false", "logging.wandb=false", "--out", f"{tmp}/run"]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), WANDB_MODE="disabled")
        log = Path(tmp) / "stderr.txt"  # a file, not a pipe: a full pipe would stall train.py while we only sample
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        handle, samples, started = psutil.Process(proc.pid), [], time.time()
        while proc.poll() is None:
            try:
                rss = handle.memory_info().rss
                if rss:  # 0 once the process has exited
                    samples.append(rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(1.0)
        if proc.returncode:
            raise SystemExit(f"train.py failed: {log.read_text()[-500:]}")
    quarters = [samples[max(0, int(len(samples) * f) - 1)] / 2**30 for f in (0.25, 0.5, 0.75, 1.0)]
    print(json.dumps({"command": " ".join(cmd[1:-2]), "seconds": round(time.time() - started, 1),
                      "peak_gib": round(max(samples) / 2**30, 2), "rss_gib_at_quarters": [round(q, 2) for q in quarters]}, indent=1))


if __name__ == "__main__":
    main()
