"""Shared command-line shape: ``--config FILE`` (repeatable), ``key.sub=value`` overrides, generated --help."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from common import config_loader as config_lib

T = TypeVar("T")


def parser(prog: str, description: str, schema: type, default_config: str | None, epilog_extra: str = "") -> argparse.ArgumentParser:
    effective = None
    if default_config and Path(default_config).is_file():
        effective = config_lib.to_dict(config_lib.load(schema, [default_config], []))
    epilog = (
        "Options (set in a YAML file or as key=value overrides, e.g. fl.rounds=5 'fl.split.clients.0.batch_size=2'; "
        f"defaults as {Path(default_config).name if default_config else 'built in'} sets them):\n"
        + config_lib.help_text(schema, effective)
        + ("\n\n" + epilog_extra if epilog_extra else "")
    )
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=None, metavar="FILE",
                   help=f"YAML config file(s), merged left to right on top of {default_config}" if default_config else "YAML config file(s), merged left to right")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, applied after the files")
    return p


def load_config(schema: type[T], args: argparse.Namespace, default_config: str | None, extra: dict[str, Any] | None = None) -> T:
    """The default config file, then each --config file on top of it, then the overrides."""
    files = config_files(default_config, args.config or [])
    overrides = list(args.overrides)
    for key, value in (extra or {}).items():
        if value is not None:
            overrides.append(f"{key}={value}")
    return config_lib.load(schema, files, overrides)


def config_files(default_config: str | Path | None, extra: list[str | Path]) -> list[str]:
    base = [str(default_config)] if default_config and Path(default_config).is_file() else []
    resolved = {Path(b).resolve() for b in base}
    return base + [str(f) for f in extra if Path(f).resolve() not in resolved]
