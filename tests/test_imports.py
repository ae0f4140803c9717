"""Every ``from <project package> import name`` in the tree resolves, the ones inside functions included:
a lazy import that a refactoring broke otherwise fails only when its code path first runs (a merge once
broke detection's data check and tools/predict.py this way, and only a full demo run showed it)."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mae_transfer", "detection", "segmentation", "pretrain")


def _project_imports():
    for path in sorted(p for d in (*PACKAGES, "tools", "benchmarks") for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in PACKAGES:
                yield path.relative_to(ROOT), node.lineno, node.module, [a.name for a in node.names if a.name != "*"]


def test_every_project_import_resolves():
    pytest.importorskip("detectron2")
    pytest.importorskip("mmseg")
    missing = []
    for path, line, module, names in _project_imports():
        mod = importlib.import_module(module)
        for name in names:
            if not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{path}:{line}: {module}.{name}")
    assert not missing, "\n".join(missing)
