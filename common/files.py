"""Safe file I/O: safetensors and JSON (torch files only weights-only), atomic writes, staged output folders."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common.errors import UserError
from common.interrupt import deferred, failure_note


def inside(root: str | Path, name: str | Path, what: str) -> Path:
    """``root / name``, refused (one line) unless it stays inside ``root`` once ``..`` and symlinks are resolved.

    For names read from files a user may have been handed (a study's results.csv, an update's metadata): a name
    that is absolute, climbs out with ``..`` or follows a link out of the folder never becomes a path we read."""
    base = Path(root).resolve()
    if Path(name).is_absolute() or not (base / name).resolve().is_relative_to(base):
        raise UserError(f"{what} '{name}' points outside {root}: refused")
    return base / name


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so that readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with _removed_on_failure(tmp):
        with os.fdopen(fd, "w") as fh:
            json.dump(_finite(data), fh, indent=2, sort_keys=False, default=_json_default, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)


@contextlib.contextmanager
def _removed_on_failure(tmp: str) -> Iterator[None]:
    """An atomic write that fails (or is interrupted) leaves no hidden temp file behind."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _finite(obj: Any) -> Any:
    """Strict JSON has no Infinity/NaN: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON ({err})") from err


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat tensor dict as safetensors, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    with _removed_on_failure(tmp):
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, tmp, metadata=metadata)
        os.replace(tmp, path)


def load_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load safetensors, turning missing/truncated/corrupt files into one-line user errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{what} {path} is truncated or corrupt ({reason})") from err


def load_weights_only(path: str | Path, what: str = "checkpoint", hint: str = "") -> Any:
    """A ``torch.save`` file read with ``weights_only=True``: tensors and plain containers, no code runs.

    Whatever stops it (truncated, crafted, not a torch file) becomes one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reason a load fails means the same to the user
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{what} {path} cannot be loaded safely ({reason[:160]}){hint}") from None


STAGING_MARK = ".fl-leakage-staging"  # inside every RUN.partial this tool made: the only partial folders it deletes


class StagedDir:
    """An output folder built under ``<final>.partial`` and renamed into place only on success.

    A failed or interrupted job leaves ``<final>.partial`` (with a ``FAILED`` note) and never a
    folder that looks complete; an earlier complete ``<final>`` survives until the new one is done.
    Nothing that exists is deleted or replaced unless the caller says ``overwrite`` *and* ``own``
    recognises the folder as one of this tool's results of the same kind (a complete training run,
    an attack's output); a ``.partial`` folder is removed only if this tool made it.
    """

    def __init__(self, final: str | Path, resume: bool = False, overwrite: bool = False,
                 own: Callable[[Path], bool] | None = None, what: str = "a result"):
        self.final = Path(final)
        if self.final.name in ("", ".", ".."):  # '.', '..', 'runs/..': name the folder they stand for
            self.final = self.final.resolve()
        if not self.final.name:
            raise UserError(f"{final} is the file system root: choose a named output folder")
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.resume = resume
        self.overwrite = overwrite
        self.own = own
        self.what = what

    def check(self) -> None:
        """Refuse, before any work, to replace what must not be replaced."""
        if self.final.exists() or self.final.is_symlink():
            if not self.final.is_dir():
                raise UserError(f"{self.final} exists and is not a folder: choose another output folder")
            if not self.overwrite:
                raise UserError(f"{self.final} already exists: choose another output folder, or pass --overwrite to replace it")
            if self.final.is_symlink():  # replacing would swap the link for a folder and strand what it points to
                raise UserError(f"{self.final} is a symbolic link: --overwrite replaces only a real folder; name the folder it "
                                f"points to ({self.final.resolve()}) instead")
            if self.own is None or not self.own(self.final):
                raise UserError(f"{self.final} is not {self.what} of this tool: refusing to replace it, even with --overwrite")
        if self.partial.exists() and not self.resume and not _ours(self.partial):
            raise UserError(f"{self.partial} exists and was not made by this tool: move it away first")
        parent = self.final.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"cannot create {self.final}: {parent} is not a folder")
        if not os.access(parent, os.W_OK):
            raise UserError(f"cannot create {self.final}: {parent} is not writable")

    def open(self) -> Path:
        self.check()
        if self.partial.exists() and not self.resume:
            shutil.rmtree(self.partial)
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create {self.partial} ({err.strerror or err})") from err
        (self.partial / STAGING_MARK).touch()
        (self.partial / "FAILED").unlink(missing_ok=True)
        return self.partial

    def commit(self) -> Path:
        with deferred():  # a Ctrl-C here would leave a partial folder without its mark, or none at all
            return self._commit()

    def _commit(self) -> Path:
        (self.partial / STAGING_MARK).unlink(missing_ok=True)
        old = None
        if self.final.exists():  # allowed by check(): overwrite, and one of our own results
            old = self.final.with_name(f"{self.final.name}.replaced-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.partial, self.final)
        if old is not None:
            shutil.rmtree(old)  # only once the new result is in place
        return self.final

    def fail(self, reason: str) -> None:
        if self.partial.exists():
            (self.partial / "FAILED").write_text(reason.strip() + "\n")

    @contextlib.contextmanager
    def staged(self, on_failure: Callable[[], None] | None = None) -> Iterator[Path]:
        """``with staged.staged() as work:`` the job writes into ``work``; committed when the block ends,
        marked FAILED (and ``on_failure`` called) when it raises."""
        path = self.open()
        try:
            yield path
        except BaseException as err:
            self.fail(failure_note(err))
            if on_failure is not None:
                on_failure()
            raise
        self.commit()


def _ours(partial: Path) -> bool:
    """A staging folder this tool made (it marks every one; a failed one carries FAILED too)."""
    return (partial / STAGING_MARK).is_file() or (partial / "FAILED").is_file()
