"""Data flows one way: lambdas and containers depend on dicomflow/, never on each other, and product code
never imports the local cloud (the endpoint URL is the only switch between emulated and real AWS)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ["lambdas", "training_job", "inference_container", "dicomflow"]
ALLOWED_LOCAL_IMPORTERS = ("dicomflow/local/", "dicomflow/cli/")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _product_files():
    for d in PRODUCT_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            if "node_modules" not in path.parts:
                yield path, path.relative_to(ROOT).as_posix()


def test_product_code_never_imports_the_local_cloud() -> None:
    offenders = [rel for path, rel in _product_files()
                 if not rel.startswith(ALLOWED_LOCAL_IMPORTERS)
                 and any(m == "dicomflow.local" or m.startswith("dicomflow.local.") for m in _imports(path))]
    assert offenders == []


def test_lambdas_and_containers_do_not_import_each_other() -> None:
    tops = {"lambdas", "training_job", "inference_container"}
    offenders = []
    for path, rel in _product_files():
        own = rel.split("/")[0]
        for mod in _imports(path):
            if mod.split(".")[0] in tops - {own}:
                offenders.append((rel, mod))
    assert offenders == []
