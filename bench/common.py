"""Shared benchmark plumbing: the target update, timing, peak memory and result files."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def final_accuracy(run: Path) -> float:
    """The run's final test accuracy, which every leakage number stands beside."""
    from federation.run_layout import RunLayout

    return float((RunLayout(run).read_run() or {})["final_test_accuracy"])


def attack_once(out: Path, overrides: list[str], config: str | None = None) -> dict[str, Any]:
    """metrics.json of the attack in ``out``: attack.py's config for the update (pipelines.attack_plan; no progress,
    W&B, LPIPS) with ``overrides``, run only when ``out`` has no finished attack, so that a re-run of a benchmark resumes."""
    from common.files import read_json
    from pipelines.attack_output import AttackOutput
    from pipelines.attack_plan import plan_attack

    files = AttackOutput(out)
    if not files.is_finished():
        plan_attack(config, ["logging.progress=false", "logging.wandb=false", "scoring.lpips=false", f"out={out}"] + overrides).run()
    return read_json(files.metrics)


def ensure_run(run: Path, overrides: list[str] | None = None) -> Path:
    """A training run to attack: reuse RUN if complete, else train it with configs/default.yaml."""
    if (run / "run.json").is_file():
        return run
    from common.config_loader import load
    from federation.train_config import TrainConfig
    from pipelines.train_job import TrainJob

    cfg = load(TrainConfig, [TrainConfig.DEFAULT_FILE], [f"out={run}", "logging.wandb=false", "logging.progress=false"] + (overrides or []))
    return TrainJob(cfg).run().run.root


def target_parser(doc: str) -> argparse.ArgumentParser:
    """--run/--client/--config and attack overrides: the arguments every attack benchmark shares."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(ROOT / "bench" / "runs" / "default"), help="training run (trained with configs/default.yaml if missing)")
    p.add_argument("--client", type=int, default=3)
    p.add_argument("--config", default=None, help="attack config file on top of the defaults (none: what attack.py chooses for the update)")
    return p


def load_target(args: Any, overrides: list[str]):
    """(update folder of ``args.client`` in the last round of ``args.run``, attack config, attacker knowledge)."""
    from federation.run_layout import RunLayout
    from pipelines.attack_setup import attacker_knowledge
    from pipelines.attack_plan import plan_attack

    run = ensure_run(Path(args.run))
    last = max(r for r, _, _ in RunLayout(run).updates())
    update = RunLayout(run).update(last, args.client)
    cfg = plan_attack(args.config, overrides + ["logging.progress=false", "logging.wandb=false"] + list(args.overrides), update=update).config
    return update, cfg, attacker_knowledge(cfg, update)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_name(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = main.name if main is not None else "bench." + name
    result = {"benchmark": name, "command": " ".join(["python -m", module, *sys.argv[1:]]), "torch": torch.__version__,
              "peak_rss_mb": round(peak_rss_mb(), 1), **result}
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
