"""How far an attack setting travels: the project's function calls from ``attack.py``'s main to the optimiser's loop.

    python -m bench.config_walk RUN [--root CHECKOUT] [--tag NAME]

Traces ``attack.main(["--run", RUN, ...])`` with ``sys.setprofile`` until ``iteration_loader`` (the loop of
``optim.iterations`` steps the Trainer fits over) is called, and counts the calls into the project's own code
(steps), the returns (climbs back up), the distinct files, how often each file is entered, how many times a
config is parsed from YAML (``config_loader.load``, ``config.load`` before the renames), and the chain of calls
from main to the loop when it is reached. ``--root`` runs another checkout's code (e.g. a git worktree at
an older commit), so that before and after are measured by the same script. Results: bench/results/config_walk_TAG.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")


class Stop(Exception):
    pass


def walk(root: Path, run: str) -> dict:
    sys.path.insert(0, str(root))
    os.chdir(root)
    import attack  # noqa: E402  (the checkout's own)

    steps: list[str] = []
    stack: list[str] = []  # the chain of project calls from main to the optimiser's loop
    returns = 0
    loads = 0

    def ours(frame) -> str | None:
        if frame.f_code.co_filename.startswith("<"):
            return None
        path = Path(frame.f_code.co_filename)
        try:
            rel = path.resolve().relative_to(root.resolve())
        except ValueError:
            return None
        return None if rel.parts[0].startswith(".") else str(rel)

    def profile(frame, event, arg):
        nonlocal returns, loads
        if event not in ("call", "return"):
            return
        where = ours(frame)
        if where is None:
            return
        name = frame.f_code.co_name
        if event == "call":
            if name == "iteration_loader":
                chain, f = [], frame
                while f is not None:
                    if ours(f) is not None and not ours(f).startswith("bench/"):
                        chain.append(f"{ours(f)}:{f.f_code.co_name}")
                    f = f.f_back
                stack.extend(reversed(chain))
                raise Stop
            if name.startswith("<") or name in ("option",):  # comprehensions, dataclass field defaults
                return
            steps.append(f"{where}:{name}")
            if name == "load" and where.startswith("common/config"):  # config.py before the renames, config_loader.py after
                loads += 1
        elif event == "return" and not name.startswith("<"):
            returns += 1

    out = tempfile.mkdtemp()
    sys.setprofile(profile)
    try:
        attack.main(["--run", run, "--out", str(Path(out) / "a"), "logging.wandb=false", "logging.progress=false", "escalation.enabled=false"])
    except Stop:
        pass
    finally:
        sys.setprofile(None)
    files = collections.Counter(s.split(":")[0] for s in steps)
    return {"steps": len(steps), "returns": returns, "files": len(files), "config_loads": loads, "chain": stack,
            "chain_depth": len(stack), "chain_files": len({c.split(":")[0] for c in stack}),
            "entries_per_file": dict(files.most_common()), "path": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a training run with captured updates (the attack stops before optimising)")
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="the checkout whose code is traced")
    p.add_argument("--tag", default="after")
    args = p.parse_args()
    results = Path(__file__).resolve().parent / "results"
    found = walk(Path(args.root).resolve(), str(Path(args.run).resolve()))
    results.mkdir(exist_ok=True)
    (results / f"config_walk_{args.tag}.json").write_text(json.dumps(found, indent=1))
    print(f"{args.tag}: {found['steps']} calls into the project's code, {found['returns']} returns, {found['files']} files, "
          f"{found['config_loads']} config loads; most entered: {list(found['entries_per_file'].items())[:4]}")
    print(f"  the chain from main to the loop ({found['chain_depth']} frames, {found['chain_files']} files): {' > '.join(found['chain'])}")


if __name__ == "__main__":
    main()
