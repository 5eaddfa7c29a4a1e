"""The rooms of dicomflow/ and the one-way rule: each room imports only the rooms below it, lambdas and containers
depend on dicomflow/ and never on each other, product code never imports the emulator, nothing imports the CLI,
the Lambda-safe rooms load without torch, and there is no import cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = {"errors", "config", "aws", "credentials", "paths", "safejson", "webserver"}
#: room -> the rooms its modules may import (besides their own). Emulator, demo and CLI sit on top.
ALLOWED = {
    "core": set(),
    "dicom": {"core"},
    "groundtruth": {"core", "dicom"},
    "modeling": {"core", "dicom"},
    "training": {"core", "dicom", "modeling", "groundtruth"},
    "inference": {"core", "dicom", "modeling"},
    "routing": {"core", "dicom", "modeling", "inference"},
    "search": {"core", "dicom", "modeling", "inference"},
    "api": {"core", "dicom", "modeling", "inference", "search"},
    "infra": {"core", "dicom", "groundtruth", "modeling", "training", "inference", "api"},
    "emulator": {"core", "dicom", "groundtruth", "modeling", "training", "inference", "infra", "search", "api"},
    "demo": {"core", "dicom", "groundtruth", "modeling", "training", "inference", "routing", "search", "api", "infra",
             "emulator"},
    "cli": {"core", "dicom", "groundtruth", "modeling", "training", "inference", "routing", "search", "api", "infra",
            "emulator", "demo"},
}
PRODUCT_TOPS = ("lambdas", "training_job", "inference_container")
LAMBDA_SAFE = ("dicom", "groundtruth", "routing", "search", "api")
HEAVY = ("torch", "monai")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "dicomflow").rglob("*.py")}


def room(module: str) -> str:
    parts = module.split(".")
    return "core" if len(parts) == 1 or parts[1] in CORE else parts[1]


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules ``path`` imports (``from a import b`` yields ``a`` and, when it is a module, ``a.b``)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in _modules())
    return names


def _product_files() -> Iterator[tuple[Path, str]]:
    for top in PRODUCT_TOPS:
        for path in (ROOT / top).rglob("*.py"):
            yield path, path.relative_to(ROOT).as_posix()


def test_each_room_imports_only_the_rooms_below_it() -> None:
    offenders = []
    for module, path in _modules().items():
        own = room(module)
        for name in _imports(path):
            if name.startswith("dicomflow.") and name in _modules():
                other = room(name)
                if other != own and other not in ALLOWED[own]:
                    offenders.append(f"{module} ({own}) imports {name} ({other})")
    assert offenders == []


def test_product_code_never_imports_the_emulator_the_demo_or_the_cli() -> None:
    offenders = [f"{rel}: {name}" for path, rel in _product_files() for name in _imports(path)
                 if name.split(".")[:2] in (["dicomflow", "emulator"], ["dicomflow", "demo"], ["dicomflow", "cli"])]
    assert offenders == []


def test_nothing_imports_the_cli() -> None:
    offenders = [module for module, path in _modules().items() if room(module) != "cli"
                 and any(name.startswith("dicomflow.cli") for name in _imports(path))]
    assert offenders == []


def test_lambdas_and_containers_do_not_import_each_other() -> None:
    offenders = []
    for path, rel in _product_files():
        own = rel.split("/")[0]
        offenders += [(rel, m) for m in _imports(path) if m.split(".")[0] in set(PRODUCT_TOPS) - {own}]
    assert offenders == []


def _loaded_at_import(module: str) -> set[str]:
    """Every module (dicomflow's and third-party top-level names) importing ``module`` loads, transitively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        path = _modules().get(current)
        if path is None:
            continue
        parents = [".".join(current.split(".")[:i]) for i in range(1, current.count(".") + 1)]
        todo += [p for p in parents if p in _modules()]
        todo += list(_imports(path, top_level_only=True))
    return seen


def test_the_lambda_safe_rooms_load_without_torch() -> None:
    offenders = {}
    for module in _modules():
        if room(module) in LAMBDA_SAFE:
            heavy = sorted(m for m in _loaded_at_import(module) if m.split(".")[0] in HEAVY)
            if heavy:
                offenders[module] = heavy
    assert offenders == {}


def test_the_cli_starts_without_torch() -> None:
    """``dicomflow --help``, ``env``, ``status`` ... answer in well under a second: torch loads only in the
    commands that train or read a model, inside the command."""
    heavy = sorted(m for m in _loaded_at_import("dicomflow.cli.main") if m.split(".")[0] in HEAVY)
    assert heavy == []


def test_there_is_no_import_cycle_in_dicomflow() -> None:
    graph = {m: {n for n in _imports(p, top_level_only=True) if n in _modules() and n != m}
             for m, p in _modules().items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1 and not nxt.startswith(node + ".") and not node.startswith(nxt + "."):
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_the_guards_see_the_rooms() -> None:
    rooms = {room(m) for m in _modules()}
    assert rooms == set(ALLOWED)  # a new room must be placed in the table above
    assert len(_modules()) > 60


#: what only the seeder and the demo's scoring may name: the sidecar that records the synthetic data's truth
SEEDER_TRUTH = ("labels.json", "sidecar_path", "SIDECAR_FILE", "label_path")


def test_no_product_code_reads_the_seeders_truth() -> None:
    files = list(_product_files())
    files += [(p, p.relative_to(ROOT).as_posix()) for m, p in _modules().items() if room(m) != "demo"]
    offenders = [f"{rel}: {word}" for path, rel in files for word in SEEDER_TRUTH if word in path.read_text()]
    assert offenders == []
    assert any(word in (ROOT / "dicomflow/demo/seed.py").read_text() for word in SEEDER_TRUTH)  # the guard sees it
