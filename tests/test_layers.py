"""The package's layers read bottom-up, and the import graph keeps them so (standard library only: ast).

    cli > study > report | profiling > engine > metrics | models > data | losses > core
    inside engine: train | pretrain | parse > evaluate | step | release > run > config

A module imports only from layers below its own, or from its own folder; layers joined by `|` never import each
other. Imports inside functions are for what must not load at start-up (the CLI's parser and the method registry
stay free of torch); no module imports another module's private (`_name`) names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "oshp"
RANK = {"core": 0, "data": 1, "losses": 1, "metrics": 2, "models": 2, "engine": 3, "report": 4, "profiling": 4,
        "study": 5, "cli": 6}
ENGINE_RANK = {"config": 0, "run": 1, "evaluate": 2, "step": 2, "release": 2, "train": 3, "pretrain": 3, "parse": 3}
LAZY_ALLOWED = {"oshp.cli", "oshp.models.registry"}
"""Modules that import inside functions on purpose: `oshp --help` and the registry must not load torch."""


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(imported oshp module, names, inside a function, line) for every import of an oshp module."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def in_function(node) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "oshp" or base.startswith("oshp."):
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base
                    found.append((target, [alias.name], in_function(node), node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("oshp."):
                    found.append((alias.name, [], in_function(node), node.lineno))
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # `oshp` itself holds only __version__
    return "cli" if parts[1] == "__main__" else parts[1]


def allowed(importer: str, imported: str) -> bool:
    a, b = layer(importer), layer(imported)
    if a == b:
        if a != "engine":
            return True
        sub_a, sub_b = importer.split(".")[2:3], imported.split(".")[2:3]
        if not sub_a or not sub_b:
            return True
        return sub_a == sub_b or ENGINE_RANK[sub_b[0]] < ENGINE_RANK[sub_a[0]]
    return RANK[b] < RANK[a]


ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_go_down_the_layers(name):
    wrong = [f"line {line}: {target}" for target, _, _, line in imports(name, ALL[name]) if not allowed(name, target)]
    assert not wrong, f"{name} ({layer(name)}) imports from a layer above or beside it: {wrong}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_inside_functions_only_where_start_up_must_stay_light(name):
    if name in LAZY_ALLOWED:
        return
    lazy = [f"line {line}: {target}" for target, _, inside, line in imports(name, ALL[name]) if inside]
    assert not lazy, f"{name} imports oshp modules inside functions: {lazy}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_private_names_cross_modules(name):
    private = [f"line {line}: {target}.{n}" for target, names, _, line in imports(name, ALL[name]) for n in names
               if n.startswith("_") and n != "__version__"]
    assert not private, f"{name} imports private names: {private}"


def test_the_layer_table_covers_every_module():
    assert {layer(m) for m in ALL} <= set(RANK)
    engine = {m.split(".")[2] for m in ALL if layer(m) == "engine" and len(m.split(".")) > 2}
    assert engine == set(ENGINE_RANK)


def test_the_cli_parser_and_the_registry_load_no_torch():
    code = ("import sys\nfrom oshp.cli import build_parser\nimport oshp.models.registry\nbuild_parser()\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'timm', 'papermill') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
