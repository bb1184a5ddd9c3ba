"""The package's modules import only from their own layer or below, so the import graph has no
cycle and each step of the data flow can be read (and tested) without the steps after it:

errors and helpers -> data, model specs, prompts -> config -> model loading -> generation -> scoring
-> tracking and per-run plots -> experiment -> grid -> cluster -> store -> report -> cli

Deferred (in-function) imports count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "uqflow"

#: layer of each module or subpackage, lowest first; a module may import its own layer and below
LAYERS = [
    ("uqflow.errors", "uqflow.registry", "uqflow.yamlfile", "uqflow.hub", "uqflow.artifact", "uqflow.console",
     "uqflow.credentials"),
    ("uqflow.data", "uqflow.models.registry", "uqflow.prompts"),
    ("uqflow.config",),
    ("uqflow.models", "uqflow.machine"),
    ("uqflow.generation",),
    ("uqflow.scoring",),
    ("uqflow.checks",),
    ("uqflow.tracking", "uqflow.plots", "uqflow.lease"),
    ("uqflow.experiment", "uqflow.rescore"),
    ("uqflow.grid",),
    ("uqflow.cluster",),
    ("uqflow.store",),
    ("uqflow.report",),
    ("uqflow.cli", "uqflow.__main__", "uqflow"),
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _layer(module: str) -> int:
    """The layer of the most specific entry naming ``module`` or a package above it."""
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    assert best is not None, f"{module} has no layer in tests/test_layers.py"
    return best


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    found = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t.startswith("uqflow") and t != module:
                found.add(t)
    return found


MODULES = _modules()
GRAPH = {m: _imports(m, p, MODULES) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_come_from_the_same_layer_or_below(module):
    upward = sorted(t for t in GRAPH[module] if _layer(t) > _layer(module) and t != "uqflow")
    assert upward == [], f"{module} (layer {_layer(module)}) imports from above: {upward}"


def test_no_import_cycle():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert cycles == []


def test_no_module_outside_generation_names_a_backend():
    """What an engine needs beyond generating (its machine needs, GPU, context length, whether a
    judge can reuse its model, how it unloads) lives on its declaration in uqflow/generation/, so no
    other module compares a backend's name: a new engine is added there alone."""
    import re

    from uqflow.generation import ENGINES

    names = "|".join(re.escape(n) for n in ENGINES.names())
    quoted = rf"""["'](?:{names})["']"""
    tests_a_name = re.compile(rf"(?:[=!]=|\bin\b)\s*[\(\[{{]?\s*{quoted}|{quoted}\s*(?:[=!]=|\bin\b)|make_engine\(\s*{quoted}"
                              rf"|ENGINES\.get\(\s*{quoted}")
    found = [f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if "generation" not in path.relative_to(PACKAGE).parts[:1]
             for i, line in enumerate(path.read_text().splitlines(), 1) if tests_a_name.search(line)]
    assert found == [], "\n".join(found)
    # the check sees what it is for
    assert tests_a_name.search('if lm.backend == "vllm":') and tests_a_name.search("make_engine('hf', lm)")
    assert not tests_a_name.search('backend: str = "hf"  # the default engine')
