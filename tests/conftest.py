"""Shared fixtures: tiny models and images, W&B disabled, one small federated run per session."""
from __future__ import annotations

import os
from pathlib import Path

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from common.config_loader import build  # noqa: E402
from federation.train_config import TrainConfig  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parent.parent


def tiny_train_config(out: Path, **extra) -> TrainConfig:
    """bn_convnet on 16 px LFW: a federation that trains in seconds."""
    tree = {
        "seed": 0,
        "out": str(out),
        "data": {"source": "lfw", "image_size": 16},
        "model": {"name": "bn_convnet", "resize_to": 0, "width": 8, "depth": 3},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0},
        "capture": {"clients": [], "rounds": []},
        "fl": {"rounds": 2, "lr_decay_every": 0, "split": {"clients": [
            {"images": 8, "batch_size": 4},
            {"images": 6, "batch_size": 3},
            {"images": 1, "batch_size": 1, "classes": ["face"]},
        ]}},
        "logging": {"wandb": False, "progress": False},
    }
    for key, value in extra.items():
        node = tree
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return build(TrainConfig, tree)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete 2-round run with every update and ground truth captured."""
    from federation.federation import Federation
    from federation.in_process import InProcessEngine

    out = tmp_path_factory.mktemp("runs") / "tiny"
    out.mkdir()
    InProcessEngine(Federation(tiny_train_config(out))).run(out)
    return out


def interrupted_then_resumed(cfg: TrainConfig, after_round: int, monkeypatch) -> None:
    """Run ``cfg``'s federation, interrupt it once round ``after_round`` is written, then --resume it to the end."""
    from common.config_loader import to_dict
    from federation.federation import Federation
    from federation.in_process import InProcessEngine

    def stop(self, rnd, invalid):
        if rnd == after_round:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(Federation, "stop_if_invalid", stop)
        with pytest.raises(KeyboardInterrupt):
            InProcessEngine(Federation(cfg)).run(Path(cfg.out))
    InProcessEngine(Federation(build(TrainConfig, to_dict(cfg)))).run(Path(cfg.out), resume=True)


def run_entry(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of an entry point's main(argv) run as its command line runs it."""
    from common.errors import run_cli

    try:
        run_cli(lambda: main(argv))
    except SystemExit as info:
        return info.code, capsys.readouterr().err.strip()
    return 0, capsys.readouterr().err.strip()
