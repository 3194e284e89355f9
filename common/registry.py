"""One registry pattern for every extension point (privacy filters, objective terms, BN-statistics
sources, datasets, image metrics, FL engines).

An extension is a small class or function registered under a name in its own file; the folder that
holds the extension point imports every module in it (:func:`load_plugins`), so adding one is adding
a file, and configs name it by that name. Unknown names are a one-line :class:`UserError` listing
the known ones.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from common.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> extension, for one extension point (``kind`` names it in errors)."""

    def __init__(self, kind: str, config_key: str = ""):
        self.kind = kind
        self.config_key = config_key  # where a user names it, for the error message
        self._items: dict[str, T] = {}

    def register(self, item: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """``@REGISTRY.register`` (the item's ``name`` attribute) or ``@REGISTRY.register(name="x")``.

        A second registration under a taken name is refused: two files claiming one name is a bug,
        not an override.
        """
        def add(obj: T) -> T:
            key = name or getattr(obj, "name", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"a {self.kind} needs a non-empty string name to be registered")
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return add(item) if item is not None else add

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def get(self, name: str, where: str = "") -> T:
        """The extension called ``name``; ``where``: the config key that named it, when more precise than the
        registry's own (``privacy.filters[1]``)."""
        if name not in self._items:
            where = f"{where or self.config_key}: " if (where or self.config_key) else ""
            raise UserError(f"{where}unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def load_plugins(package: str, path: list[str] | None = None) -> list[str]:
    """Import every module of ``package`` (one extension per file registers itself on import)."""
    pkg = importlib.import_module(package)
    found = []
    for info in sorted(pkgutil.iter_modules(path if path is not None else list(pkg.__path__)), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{package}.{info.name}")
        found.append(info.name)
    return found
