"""The import graph of ``src/wsss`` follows the layering (issue 9): an import only points down.

    0  wsss (package), wsss.io, wsss.config
    1  wsss.data
    2  wsss.backbones
    3  wsss.methods                      leaves: networks, losses, LightningModules
    4  wsss.training, inference, evaluation, refine, report, segmentation, affinity,
       fingerprint, stages              the shared stages (may import each other)
    5  wsss.recipes                      multi-stage recipes composed from the stages
    6  wsss.pipeline
    7  wsss.cli

Every ``import`` / ``from ... import`` is read with ``ast`` - including imports inside
functions, relative imports, ``importlib.import_module("wsss...")`` and registry strings
``"wsss.pkg.module:Name"`` (the lazy tables of methods and recipes).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "wsss"

LAYERS: dict[str, int] = {
    "wsss": 0, "wsss.io": 0, "wsss.config": 0,
    "wsss.data": 1,
    "wsss.backbones": 2,
    "wsss.methods": 3,
    "wsss.training": 4, "wsss.inference": 4, "wsss.evaluation": 4, "wsss.refine": 4, "wsss.report": 4,
    "wsss.segmentation": 4, "wsss.affinity": 4, "wsss.fingerprint": 4, "wsss.stages": 4,
    "wsss.recipes": 5,
    "wsss.pipeline": 6,
    "wsss.cli": 7,
}
#: what a method may never import (contract: methods are leaves)
METHOD_FORBIDDEN = ("wsss.pipeline", "wsss.stages", "wsss.training", "wsss.recipes", "wsss.inference",
                    "wsss.refine", "wsss.evaluation", "wsss.report")
GSLM = PKG / "methods" / "gslm"
_REGISTRY = re.compile(r"^(wsss(?:\.\w+)+):\w+$")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> int | None:
    """Layer of the longest LAYERS prefix of ``module`` (None: not a wsss module)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return LAYERS[key]
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    """``[(line, imported module)]`` for every import anywhere in the file."""
    return _imports_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py", str(path))


def _imports_in(text: str, me: str, is_package: bool, filename: str = "<src>") -> list[tuple[int, str]]:
    tree = ast.parse(text, filename=filename)
    package = me if is_package else me.rpartition(".")[0]
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for a in node.names:  # `from wsss import pipeline` imports the module wsss.pipeline
                sub = f"{mod}.{a.name}"
                if mod.split(".")[0] != "wsss":  # `from unittest import mock`: record unittest.mock too
                    out += [(node.lineno, mod), (node.lineno, sub)]
                else:
                    out.append((node.lineno, sub if sub in MODULES else mod))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            m = _REGISTRY.match(node.value)
            if m:
                out.append((node.lineno, m.group(1)))
    return out


def _violations(paths) -> list[str]:
    bad = []
    for path in paths:
        me = _module_name(path)
        mine = _layer(me)
        assert mine is not None, f"{path}: module {me} has no layer in LAYERS (add it)"
        for line, mod in _imports(path):
            theirs = _layer(mod)
            if theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(SRC)}:{line}: {me} (layer {mine}) imports {mod} (layer {theirs})")
    return bad


def _not_gslm(paths):
    """All paths (GSLM used to be excluded here and checked on its own; it is a leaf now)."""
    return list(paths)


def test_the_parser_sees_every_kind_of_import():
    """The checker itself: imports in functions, relative imports, importlib and registry strings."""
    src = '''"""doc mentioning wsss.pipeline:run_pipeline is not an import"""
import os
from unittest import mock
from . import model
from .model import X
from wsss import pipeline
def f():
    from wsss.training import train
    import importlib
    importlib.import_module("wsss.stages")
TABLE = {"x": "wsss.recipes.rounds:run_rounds"}
'''
    mods = [m for _, m in _imports_in(src, "wsss.methods.probe", False)]
    assert mods.count("os") == 1 and "unittest.mock" in mods
    assert {"wsss.methods.model", "wsss.pipeline", "wsss.training", "wsss.stages", "wsss.recipes.rounds"} <= set(mods)
    assert "wsss.pipeline:run_pipeline" not in mods and mods.count("wsss.pipeline") == 1


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if _layer(m) is None]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_no_upward_imports():
    bad = _violations(_not_gslm(MODULES.values()))
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_methods_are_leaves():
    bad = []
    for path in _not_gslm([p for m, p in MODULES.items() if m.startswith("wsss.methods")]):
        for line, mod in _imports(path):
            if any(mod == f or mod.startswith(f + ".") for f in METHOD_FORBIDDEN):
                bad.append(f"{path.relative_to(SRC)}:{line}: imports {mod}")
    assert not bad, "methods must not import stages/pipeline/training/...:\n" + "\n".join(bad)


def test_no_unittest_mock_in_src():
    bad = [f"{p.relative_to(SRC)}:{line}" for p in _not_gslm(MODULES.values()) for line, mod in _imports(p)
           if mod == "unittest.mock" or mod.startswith("unittest.mock.")]
    assert not bad, f"unittest.mock used in production code: {bad}"


def test_gslm_is_a_leaf_too():
    """GSLM's folder, checked on its own (it used to import the pipeline, training, inference,
    evaluation and refine and to patch training with unittest.mock; its round driver now lives in
    ``wsss.recipes.rounds``)."""
    paths = sorted(GSLM.rglob("*.py"))
    assert paths, f"{GSLM}: GSLM folder not found"
    bad = _violations(paths)
    for path in paths:
        for line, mod in _imports(path):
            if any(mod == f or mod.startswith(f + ".") for f in METHOD_FORBIDDEN):
                bad.append(f"{path.relative_to(SRC)}:{line}: method imports {mod}")
            if mod == "unittest.mock" or mod.startswith("unittest.mock."):
                bad.append(f"{path.relative_to(SRC)}:{line}: production code imports {mod}")
    assert not bad, "GSLM is not a leaf:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("module", ["wsss.methods.cam.module"])
def test_importing_a_method_does_not_load_the_stages(module):
    """Run in a fresh interpreter: importing a method pulls in none of the upper layers."""
    import subprocess
    import sys

    code = (f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[:2] in "
            f"[p.split('.') for p in {list(METHOD_FORBIDDEN)!r}]]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
