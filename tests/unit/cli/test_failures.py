"""The CLI never shows a traceback for an expected failure: every command run with no AWS environment at
all, against a local cloud that is down, and the one-line messages for AWS's usual errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

from dicomflow.cli import main as cli_main
from dicomflow.cli.failures import explain

# Commands that start the local cloud (which needs no AWS environment) are exercised by the end-to-end test.
STARTS_THE_CLOUD = {"up", "demo"}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _commands(cmd, (*path, name))
        else:
            found.append(((*path, name), cmd))
    return found


def _required_values(tmp: Path) -> dict[str, str]:
    """A plausible value for every required option of every command (a new one fails the test until added)."""
    labels = tmp / "labels"
    labels.mkdir(exist_ok=True)
    (labels / "case.nii.gz").write_bytes(b"not a volume")
    return {"--to": "s3://some-bucket/out/", "--labels": str(labels), "--manifest": "s3://some-bucket/m.jsonl",
            "--task": "classification2d", "--data": "s3://some-bucket/data/", "--endpoint": "some-endpoint",
            "--model": "s3://some-bucket/model.tar.gz", "--study": "1.2.826.0.1.3680043.8.498.1",
            "--job-name": "some-job", "--function": "some-router", "--from": "s3://some-bucket/ingest/",
            "--group": "radiologist", "--count": "4"}


def _argv(path: tuple[str, ...], cmd: click.Command, values: dict[str, str], tmp: Path) -> list[str]:
    argv = list(path)
    for param in cmd.params:
        if isinstance(param, click.Argument):
            argv.append(values["--labels"])  # an existing folder: the one argument any command takes is paths
        elif param.required:
            assert param.opts[0] in values, f"add a value for {' '.join(path)} {param.opts[0]} to the test"
            argv += [param.opts[0], values[param.opts[0]]]
        if "--yes" in param.opts:
            argv.append("--yes")
    if path == ("label", "start"):
        job = tmp / "job.json"
        job.write_text(json.dumps({"LabelingJobName": "x"}))
        argv += ["--job", str(job)]
    return argv


def _bare_environment(tmp: Path, **extra: str) -> dict[str, str]:
    """No AWS_*, no DICOMFLOW_* but the data dir, a HOME without ~/.aws."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
            "DICOMFLOW_HOME": str(tmp / "data"), "AWS_CONFIG_FILE": str(home / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"), "AWS_EC2_METADATA_DISABLED": "true", **extra}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomflow.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _assert_one_line_failure(argv: list[str], proc: subprocess.CompletedProcess) -> None:
    what = f"dicomflow {' '.join(argv)}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, f"{what}:\n{proc.stderr}"
    assert "SDK v2" not in proc.stderr, f"{what} printed the SageMaker SDK banner"
    assert proc.returncode != 70, f"{what} failed unexpectedly:\n{proc.stderr}"
    if proc.returncode != 0:
        assert (proc.stderr + proc.stdout).strip(), f"{what} failed without saying why"


@pytest.mark.parametrize("case", [c for c in _commands(cli_main.cli) if c[0][0] not in STARTS_THE_CLOUD],
                         ids=lambda c: " ".join(c[0]))
def test_every_command_without_any_aws_environment(case, tmp_path):
    path, cmd = case
    argv = _argv(path, cmd, _required_values(tmp_path), tmp_path)
    _assert_one_line_failure(argv, _run(argv, _bare_environment(tmp_path)))


@pytest.mark.parametrize("argv", [["infra", "outputs"], ["infer", "--endpoint", "e", "--study", "1.2.3"],
                                  ["deploy", "--endpoint", "e", "--model", "s3://b/m.tar.gz"]])
def test_a_local_cloud_that_is_down_is_named_with_the_fix(argv, tmp_path):
    env = _bare_environment(tmp_path, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="testing",
                            AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                            DICOMFLOW_PACS_URL="http://127.0.0.1:9/dicom-web", AWS_MAX_ATTEMPTS="1")
    proc = _run(argv, env)
    _assert_one_line_failure(argv, proc)
    assert proc.returncode == 1
    assert "dicomflow up" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def _client_error(code: str, message: str = "nope", op: str = "DescribeStacks") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


@pytest.mark.parametrize(("exc", "expected"), [
    (NoCredentialsError(), 'eval "$(dicomflow env)"'),
    (NoRegionError(), "AWS_REGION"),
    (EndpointConnectionError(endpoint_url="https://sagemaker.eu-west-1.amazonaws.com/x?q=1"),
     "does not answer at https://sagemaker.eu-west-1.amazonaws.com: check the network"),
    (EndpointConnectionError(endpoint_url="http://admin:s3cret@127.0.0.1:4566/"),
     "does not answer at http://127.0.0.1:4566: the local cloud is down"),
    (_client_error("ThrottlingException", "Rate exceeded"), "throttled: retry"),
    (_client_error("ExpiredToken"), "aws sso login"),
    (_client_error("UnrecognizedClientException"), "does not accept these credentials"),
    (_client_error("AccessDeniedException"), "lacks this permission"),
    (_client_error("ValidationError", "Stack with id dicomflow does not exist"),
     "AWS DescribeStacks failed: ValidationError: Stack with id dicomflow does not exist"),
    (FileNotFoundError(2, "No such file or directory", "/nowhere/job.json"), "/nowhere/job.json"),
])
def test_expected_failures_are_explained_in_one_line(exc, expected):
    message = explain(exc)
    assert message is not None and expected in message and "\n" not in message
    assert "s3cret" not in message and "q=1" not in message  # credentials and queries never printed


def test_an_unexpected_failure_prints_one_line_and_logs_the_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DICOMFLOW_HOME", str(tmp_path))

    def broken() -> None:
        raise TypeError("a bug [red]with brackets[/red]")

    monkeypatch.setattr(cli_main.cli, "main", lambda **_: broken())
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main()
    assert exit_info.value.code == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected TypeError: a bug [red]with brackets[/red]" in err
    log = tmp_path / "logs" / "cli-errors.log"
    assert str(log) in err.replace("\n", "")
    assert "Traceback" in log.read_text() and "in broken" in log.read_text()
    assert (log.stat().st_mode & 0o777) == 0o600 and (log.parent.stat().st_mode & 0o777) == 0o700
