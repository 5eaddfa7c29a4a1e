"""Package each ``lambdas/<name>/`` handler as a deterministic zip and upload it.

A zip holds the handler directory's ``.py`` files, exactly the ``dicomflow`` modules they import
(followed transitively with :mod:`ast`, imports inside functions included) and the third-party
distributions those modules need that the AWS Lambda Python runtime lacks (it ships boto3,
botocore, s3transfer, jmespath, python-dateutil, six and urllib3; ``requests``, ``pydicom``,
``dicomweb-client``, ``numpy`` and ``pillow`` must be vendored). Torch and MONAI are refused:
a Lambda that pulls them in imports the wrong module.

Where the third-party files come from (``deps``):

* ``venv`` - copied from this interpreter's site-packages. Right for the emulator, whose host executor
  runs the zip with this same Python; on real AWS binary wheels built for glibc > 2.26 (numpy 2.3+,
  pillow 11+) do not load in the python3.11 runtime (Amazon Linux 2), so
* ``pip`` - ``pip install --target`` of the same distributions for ``manylinux2014_x86_64`` / CPython
  3.11 (needs PyPI), the default when deploying to real AWS;
* ``none`` - handler + ``dicomflow`` only (bring your own layer).

Zips are deterministic (sorted entries, fixed timestamps and modes), so an unchanged build has the same
SHA-256 and the same S3 key (``lambdas/<name>/<sha>.zip``), and CloudFormation sees no change.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from dicomflow import aws
from dicomflow.infra.errors import InfraError
from dicomflow.paths import REPO_ROOT

LAMBDAS_DIR = REPO_ROOT / "lambdas"
PACKAGE_ROOT = REPO_ROOT / "dicomflow"
#: Distributions the AWS Lambda python3.11 runtime provides (never vendored: the runtime's own copy wins
#: for botocore's sake, and they are large).
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})
#: Never allowed in a Lambda zip.
#: never in a Lambda: the ML stack and the host-only tools (highdicom, a DICOM encoder, is allowed: the
#: consolidation Lambda writes the SEG of a series the workers outlined)
FORBIDDEN = frozenset({"torch", "monai", "torchvision", "tensorboard", "sagemaker", "moto", "nibabel"})
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
LAMBDA_PLATFORM = ("manylinux2014_x86_64", "3.11")
DEPS_MODES = ("venv", "pip", "none")


@dataclass
class BuiltPackage:
    """One Lambda zip: its content hash, what went in, and (after upload) where it lives."""

    name: str
    data: bytes = field(repr=False)
    sha256: str
    modules: list[str]
    distributions: list[str]
    files: int
    bucket: str | None = None
    key: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def parameter(self) -> str:
        """Template parameter that takes this zip's key: ``pre_label`` -> ``PreLabelCodeKey``."""
        return "".join(part.capitalize() for part in self.name.split("_")) + "CodeKey"

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "bytes": self.size, "files": self.files,
                "modules": self.modules, "distributions": self.distributions,
                "s3": f"s3://{self.bucket}/{self.key}" if self.key else None}


# ---------------------------------------------------------------- import graph
def _module_file(module: str, package_root: Path) -> Path | None:
    """``dicomflow.a.b`` -> its file under ``package_root``'s parent, or None."""
    base = package_root.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports_of(path: Path, module: str | None) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved against ``module``)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    package = (module.rsplit(".", 1)[0] if module and path.name != "__init__.py" else module) or ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1]) if package else ""
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod:
                names.add(mod)
                names.update(f"{mod}.{a.name}" for a in node.names)  # "from pkg import submodule"
    return names


def import_closure(handler_dir: Path, package_root: Path = PACKAGE_ROOT) -> tuple[dict[str, Path], set[str]]:
    """Follow imports from a handler directory.

    Returns ``({arcname: file}`` for the handler's own files and every ``dicomflow`` module reached
    (with the ``__init__.py`` of each package on the way), ``{third-party top-level names}``).
    """
    pkg = package_root.name
    files: dict[str, Path] = {}
    third_party: set[str] = set()
    local = {p.stem for p in handler_dir.glob("*.py")}
    queue: list[tuple[Path, str | None]] = []
    for path in sorted(handler_dir.glob("*.py")):
        files[path.name] = path
        queue.append((path, None))
    seen: set[str] = set()
    while queue:
        path, module = queue.pop()
        for name in sorted(_imports_of(path, module)):
            top = name.split(".")[0]
            if top in local or top in sys.stdlib_module_names or top == "__future__":
                continue
            if top != pkg:
                third_party.add(top)
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the package __init__s on the way, then the module
                mod = ".".join(parts[:i])
                if mod in seen:
                    continue
                file = _module_file(mod, package_root)
                if file is None:
                    continue  # "from dicomflow.x import name": the name is not a module
                seen.add(mod)
                files[file.relative_to(package_root.parent).as_posix()] = file
                queue.append((file, mod))
    return files, third_party


# ---------------------------------------------------------------- third-party distributions
def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def required_distributions(top_levels: Iterable[str]) -> list[str]:
    """Installed distributions (canonical names) providing ``top_levels`` plus their required deps.

    Runtime-provided distributions are left out; a forbidden one (torch, monai, ..) is an error.
    """
    owners = md.packages_distributions()
    wanted: list[str] = []
    for top in sorted(top_levels):
        dists = owners.get(top)
        if not dists:
            raise InfraError(f"a Lambda imports {top!r}, which is not installed in this environment; "
                             "install it or remove the import")
        wanted.extend(dists)
    found: set[str] = set()
    stack = [_canonical(d) for d in wanted]
    while stack:
        name = stack.pop()
        if name in found or name in RUNTIME_PROVIDED:
            continue
        if name in FORBIDDEN:
            raise InfraError(f"a Lambda would need {name!r}; Lambdas must not import the ML stack "
                             "(move that import out of the module the handler uses)")
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as exc:
            raise InfraError(f"distribution {name!r} needed by a Lambda is not installed; pip install it") from exc
        found.add(name)
        for req_text in dist.requires or []:
            req = Requirement(req_text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(_canonical(req.name))
    return sorted(found)


def _venv_files(dist_names: Iterable[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name in dist_names:
        dist = md.distribution(name)
        for rel in dist.files or []:
            parts = Path(str(rel)).parts
            if parts[0] == ".." or "__pycache__" in parts or str(rel).endswith(".pyc"):
                continue
            src = Path(str(dist.locate_file(rel)))
            if src.is_file():
                files[Path(str(rel)).as_posix()] = src
    return files


def _pip_files(dist_names: list[str], target: Path) -> dict[str, Path]:
    """``pip install --target`` for the Lambda platform; pure-Python pins follow this environment."""
    reqs = []
    for name in dist_names:
        dist = md.distribution(name)
        wheel = dist.read_text("WHEEL") or ""
        pure = "Root-Is-Purelib: true" in wheel
        reqs.append(f"{name}=={dist.version}" if pure else name)  # binary wheels: newest for the platform
    platform, py = LAMBDA_PLATFORM
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps", "--target", str(target),
           "--platform", platform, "--python-version", py, "--implementation", "cp", "--only-binary=:all:", *reqs]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InfraError(f"pip could not fetch Lambda dependencies for {platform}/cp{py}: {tail}; "
                         "check network access to PyPI or use --deps venv")
    return {path.relative_to(target).as_posix(): path for path in target.rglob("*")
            if path.is_file() and "__pycache__" not in path.relative_to(target).parts
            and path.relative_to(target).parts[0] != "bin"}


# ---------------------------------------------------------------- zips
def deterministic_zip(files: dict[str, Path]) -> bytes:
    """Zip ``{arcname: path}`` with sorted entries, fixed timestamps and modes: same input, same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = os.access(files[arcname], os.X_OK) and arcname.endswith((".so", ".sh"))
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.create_system = 3
            zf.writestr(info, files[arcname].read_bytes())
    return buf.getvalue()


def build(handler_dir: str | Path, deps: str = "venv") -> BuiltPackage:
    """Build one Lambda zip from ``handler_dir`` (must hold ``handler.py``)."""
    handler_dir = Path(handler_dir)
    if deps not in DEPS_MODES:
        raise InfraError(f"--deps {deps!r} is not one of {', '.join(DEPS_MODES)}")
    if not (handler_dir / "handler.py").is_file():
        raise InfraError(f"{handler_dir} has no handler.py; a Lambda directory needs handler.lambda_handler")
    files, third_party = import_closure(handler_dir)
    modules = sorted(k for k in files if "/" in k)
    dists = required_distributions(third_party) if deps != "none" else []
    with tempfile.TemporaryDirectory(prefix="dicomflow-pkg-") as tmp:
        if deps == "venv":
            vendored = _venv_files(dists)
        elif deps == "pip" and dists:
            vendored = _pip_files(dists, Path(tmp))
        else:
            vendored = {}
        clash = sorted(set(vendored) & set(files))
        if clash:
            raise InfraError(f"vendored files would overwrite Lambda code: {', '.join(clash[:3])}")
        everything = {**vendored, **files}
        data = deterministic_zip(everything)
    return BuiltPackage(name=handler_dir.name, data=data, sha256=hashlib.sha256(data).hexdigest(),
                        modules=modules, distributions=dists, files=len(everything))


def lambda_dirs(lambdas_dir: str | Path = LAMBDAS_DIR) -> list[Path]:
    """Every ``lambdas/<name>/`` with a ``handler.py``, sorted."""
    found = sorted(p.parent for p in Path(lambdas_dir).glob("*/handler.py"))
    if not found:
        raise InfraError(f"no Lambda handlers under {lambdas_dir} (expected <name>/handler.py)")
    return found


# ---------------------------------------------------------------- upload
def deploy_bucket_name() -> str:
    """``dicomflow-deploy-<account>-<region>``: where Lambda zips go (outside the stack, like CDK's bootstrap)."""
    account = aws.client("sts").get_caller_identity()["Account"]
    return f"dicomflow-deploy-{account}-{aws.region()}"


def ensure_deploy_bucket(bucket: str) -> bool:
    """Create the deploy bucket (SSE, public access blocked, TLS-only) if missing; True if created."""
    s3 = aws.client("s3")
    try:
        if aws.bucket_exists(bucket, s3):
            return False
    except aws.S3Error as exc:
        raise InfraError(f"cannot use deploy bucket {bucket}: {exc}") from exc
    region = aws.region()
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    if not aws.is_emulated():  # the emulator speaks plain HTTP: a TLS-only policy would deny every request
        s3.put_bucket_policy(Bucket=bucket, Policy=tls_only_policy(bucket))
    return True


def tls_only_policy(bucket: str) -> str:
    """A bucket policy that denies every request not made over TLS."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})


def upload(pkg: BuiltPackage, bucket: str) -> BuiltPackage:
    """Put the zip at ``lambdas/<name>/<sha256>.zip`` unless that key already exists (same hash, same bytes)."""
    key = f"lambdas/{pkg.name}/{pkg.sha256[:32]}.zip"
    uri = aws.s3_uri(bucket, key)
    if not aws.exists(uri):
        aws.write(uri, pkg.data, "application/zip", ServerSideEncryption="AES256")
    pkg.bucket, pkg.key = bucket, key
    return pkg


def upload_schema(bucket: str) -> str:
    """Put the search API's GraphQL schema at ``api/schema/<sha256>.graphql`` (content-addressed like the zips);
    returns its key, the ``SearchApiSchemaKey`` parameter (AppSync reads it from there)."""
    from dicomflow.api import SCHEMA_FILE

    data = SCHEMA_FILE.read_bytes()
    key = f"api/schema/{hashlib.sha256(data).hexdigest()[:32]}.graphql"
    uri = aws.s3_uri(bucket, key)
    if not aws.exists(uri):
        aws.write(uri, data, "application/graphql", ServerSideEncryption="AES256")
    return key


def package_all(lambdas_dir: str | Path = LAMBDAS_DIR, deps: str = "venv", bucket: str | None = None,
                upload_zips: bool = True) -> list[BuiltPackage]:
    """Build every Lambda and (by default) upload it to the deploy bucket, creating that if needed."""
    built = [build(d, deps) for d in lambda_dirs(lambdas_dir)]
    if upload_zips:
        bucket = bucket or deploy_bucket_name()
        ensure_deploy_bucket(bucket)
        for pkg in built:
            upload(pkg, bucket)
    return built
