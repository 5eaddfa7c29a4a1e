"""Lambda packaging: exactly the dicomflow modules a handler imports, vendored deps, deterministic zips."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from dicomflow.infra import package
from dicomflow.infra.errors import InfraError


def _handler(tmp_path: Path, name: str, source: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "handler.py").write_text(source)
    return d


def _names(pkg: package.BuiltPackage) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(pkg.data)).namelist()


def test_closure_follows_dicomflow_imports_only(tmp_path: Path) -> None:
    d = _handler(tmp_path, "sign_it", "import json\nfrom dicomflow.groundtruth import signing\n\n"
                                      "def lambda_handler(event, context):\n"
                                      "    from helpers import x\n    return x\n")
    (d / "helpers.py").write_text("x = 1\n")
    files, third = package.import_closure(d)
    # signing imports dicomflow.aws inside a function: followed too (and aws brings boto3)
    assert sorted(files) == ["dicomflow/__init__.py", "dicomflow/aws.py", "dicomflow/config.py",
                             "dicomflow/dicom/__init__.py", "dicomflow/dicom/uid.py", "dicomflow/errors.py",
                             "dicomflow/groundtruth/__init__.py", "dicomflow/groundtruth/signing.py",
                             "dicomflow/paths.py", "handler.py", "helpers.py"]
    assert third == {"boto3", "botocore"}
    pkg = package.build(d, deps="none")
    assert _names(pkg) == sorted(files)
    assert pkg.parameter == "SignItCodeKey"


def test_lazy_imports_inside_functions_are_followed(tmp_path: Path) -> None:
    d = _handler(tmp_path, "lazy", "def lambda_handler(event, context):\n"
                                   "    from dicomflow.aws import client\n    return client\n")
    files, third = package.import_closure(d)
    assert "dicomflow/aws.py" in files and "dicomflow/config.py" not in files
    assert third == {"boto3", "botocore"}
    assert package.required_distributions(third) == []  # the Lambda runtime provides boto3


def test_build_is_deterministic_with_fixed_metadata(tmp_path: Path) -> None:
    d = _handler(tmp_path, "det",
                 "from dicomflow.groundtruth import labels\n\ndef lambda_handler(e, c):\n    return 1\n")
    a, b = package.build(d, deps="none"), package.build(d, deps="none")
    assert a.sha256 == b.sha256 and a.data == b.data
    infos = zipfile.ZipFile(io.BytesIO(a.data)).infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {package.FIXED_DATE}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}
    (d / "handler.py").write_text((d / "handler.py").read_text() + "# changed\n")
    assert package.build(d, deps="none").sha256 != a.sha256


def test_vendors_what_the_runtime_lacks(tmp_path: Path) -> None:
    d = _handler(tmp_path, "web", "import requests\n\ndef lambda_handler(e, c):\n    return 1\n")
    pkg = package.build(d, deps="venv")
    assert "requests" in pkg.distributions and "idna" in pkg.distributions
    assert not set(pkg.distributions) & package.RUNTIME_PROVIDED  # urllib3, boto3: the runtime's own
    names = _names(pkg)
    assert "requests/__init__.py" in names and not any(n.startswith("urllib3/") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_ml_stack_is_refused(tmp_path: Path) -> None:
    d = _handler(tmp_path, "heavy", "import torch\n\ndef lambda_handler(e, c):\n    return 1\n")
    with pytest.raises(InfraError, match="must not import the ML stack"):
        package.build(d)


def test_missing_handler_and_bad_deps_mode(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InfraError, match="no handler.py"):
        package.build(tmp_path / "empty")
    d = _handler(tmp_path, "ok", "def lambda_handler(e, c):\n    return 1\n")
    with pytest.raises(InfraError, match="--deps"):
        package.build(d, deps="conda")


ROUTER_NEEDS = {"dicomflow/inference/__init__.py", "dicomflow/inference/endpoint.py", "dicomflow/inference/errors.py",
                "dicomflow/inference/request.py", "dicomflow/inference/timing.py", "dicomflow/modeling/__init__.py",
                "dicomflow/modeling/contract.py", "dicomflow/modeling/registry.py"}
#: the search ingester embeds through an endpoint: the torch-free endpoint module and what it imports (the search
#: API opens the same image index module, so it carries them too)
SEARCH_INGEST_NEEDS = {"dicomflow/inference/__init__.py", "dicomflow/inference/endpoint.py",
                       "dicomflow/inference/timing.py", "dicomflow/modeling/__init__.py",
                       "dicomflow/modeling/contract.py", "dicomflow/modeling/registry.py"}


@pytest.mark.slow
def test_project_lambdas_contain_only_what_they_need() -> None:
    for handler_dir in package.lambda_dirs():
        pkg = package.build(handler_dir, deps="none")
        names = _names(pkg)
        assert "handler.py" in names
        dicomflow_files = {n for n in names if n.startswith("dicomflow/")}
        assert dicomflow_files == set(pkg.modules)
        # the router starts inference: it needs the torch-free request, endpoint and registry modules
        allowed = {"router": ROUTER_NEEDS, "search_ingest": SEARCH_INGEST_NEEDS,
                   "search_api": SEARCH_INGEST_NEEDS}.get(handler_dir.name, set())
        for forbidden in ("dicomflow/emulator/", "dicomflow/cli/", "dicomflow/infra/", "dicomflow/modeling/",
                          "dicomflow/training/", "dicomflow/inference/"):
            assert not any(n.startswith(forbidden) and n not in allowed for n in names), (handler_dir.name, forbidden)
        files, third = package.import_closure(handler_dir)
        assert not third & {"torch", "monai", "moto", "sagemaker"}
