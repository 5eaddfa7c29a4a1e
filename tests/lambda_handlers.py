"""The repository's Lambda handlers loaded as the Lambda runtime loads them: ``lambdas/<name>/handler.py`` as a module
of its own (not importable as a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

LAMBDAS = Path(__file__).resolve().parents[1] / "lambdas"


def load_handler(name: str, module_name: str | None = None) -> ModuleType:
    """A fresh module of ``lambdas/<name>/handler.py`` (its module state, e.g. cached clients, starts empty)."""
    spec = importlib.util.spec_from_file_location(module_name or f"{name}_handler", LAMBDAS / name / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
