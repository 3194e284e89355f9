"""The code's layers, checked from its source: imports point one way and nothing imports in a circle.

Every import counts, also the ones inside functions (a lazy import hides a circle from Python, not
from a reader). Entry points (the top-level scripts), ``bench/`` and ``tests/`` sit above everything.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a folder may import only from folders before it (and from itself).
LAYERS = ["common", "datamodules", "model", "privacy", "federation", "inversion", "leakage", "pipelines", "studies"]
ABOVE = ["bench", "tests"]


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} of the project's code (entry points at top level, packages below)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("runs",) + tuple(ABOVE):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def named_in_strings(tree: ast.AST, modules: dict[str, Path]) -> list[str]:
    """Project modules named in strings, where a string stands for an import: the argument of
    ``importlib.import_module``/``__import__``, a ``"pkg.mod:obj"`` target, and a tuple or list of package
    names (``("inversion", "leakage")``, what ``common.devices.move_to`` walks into). A dotted string
    alone is not counted: config keys such as ``"privacy.filters"`` look the same."""
    packages = {m.split(".")[0] for m in modules if "." in m}

    def dotted(text: str) -> bool:
        return text.split(".")[0] in packages and all(part.isidentifier() for part in text.split("."))

    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "__import__") and dotted(node.args[0].value):
                names.append(node.args[0].value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count(":") == 1:
            module, _, attr = node.value.partition(":")
            if dotted(module) and attr.isidentifier():
                names.append(module)
        elif isinstance(node, (ast.Tuple, ast.List)) and node.elts and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in packages for e in node.elts):
            names += [e.value for e in node.elts]
    return names


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports (``from a.b import c`` names a.b.c when that is a module), also by a
    module name in a string (:func:`named_in_strings`)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        names += named_in_strings(node, modules) if node is tree else []
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges = {m: imports_of(p, modules) for m, p in modules.items()}
    for mod, deps in edges.items():
        # a package's __init__ is imported with any of its modules; that edge is not a circle of the code
        deps.discard(mod)
        for dep in list(deps):
            if mod.startswith(dep + "."):
                deps.discard(dep)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a closed path), or None."""
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state[nxt] == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state[nxt] == 0:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state[node] == 0:
            found = visit(node)
            if found:
                return found
    return None


def folder_of(module: str) -> str:
    return module.split(".")[0] if "." in module or module in LAYERS else "<entry point>"


def test_a_module_named_in_a_string_counts_as_an_import(tmp_path: Path) -> None:
    modules = {"common": tmp_path, "common.util": tmp_path, "studies": tmp_path, "studies.runner": tmp_path}
    code = tmp_path / "m.py"
    code.write_text('"""Uses studies.runner, in prose."""\nimport importlib\n\n'
                    'def f():\n    """studies.runner"""\n    return importlib.import_module("studies.runner"), ["studies"], "common.util:thing"\n'
                    'KEY = "studies.runner"  # a config key, not an import\nWORDS = ("studies are fun", "common")\n')
    assert imports_of(code, modules) == {"studies.runner", "studies", "common.util"}


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_in_a_circle() -> None:
    cycle = find_cycle(graph(source_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_folder_imports_in_a_circle() -> None:
    folders: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph(source_modules()).items():
        folders[folder_of(mod)] |= {folder_of(d) for d in deps} - {folder_of(mod)}
    cycle = find_cycle(folders)
    assert cycle is None, "folder cycle: " + " -> ".join(cycle)


def test_folders_are_the_declared_layers() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages - set(LAYERS) - set(ABOVE) == set(), "a package that is not a declared layer: add it to LAYERS"


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    wrong = sorted(f"{mod} imports {dep}" for mod, deps in graph(source_modules()).items() if folder_of(mod) == layer
                   for dep in deps if folder_of(dep) not in allowed)
    assert not wrong, "\n".join(wrong)


def test_entry_points_are_not_imported() -> None:
    entries = {m for m in source_modules() if folder_of(m) == "<entry point>"}
    wrong = sorted(f"{mod} imports {dep}" for mod, deps in graph(source_modules()).items() for dep in deps
                   if dep in entries and mod not in entries)
    assert not wrong, "\n".join(wrong)
