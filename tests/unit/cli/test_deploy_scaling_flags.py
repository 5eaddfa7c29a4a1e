"""``dicomflow deploy``'s autoscaling flags and ``infer --batch``'s input checks fail before any AWS call."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dicomflow.cli.deploy import deploy, infer
from dicomflow.inference.batch import read_study_list
from dicomflow.inference.endpoint import EndpointError

MODEL = ["--endpoint", "e", "--model", "s3://b/model.tar.gz"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--min-instances", "0"], "needs both --min-instances and --max-instances"),
    (["--min-instances", "0", "--max-instances", "2", "--realtime"], "scale async endpoints"),
    (["--min-instances", "3", "--max-instances", "2"], "need 0 <= min <= max"),
    (["--max-instances", "0", "--min-instances", "0"], "x>=1"),
])
def test_bad_scaling_flags_are_refused(extra: list[str], message: str) -> None:
    result = CliRunner().invoke(deploy, MODEL + extra)
    assert result.exit_code != 0
    assert message in (result.output + str(result.exception))


@pytest.mark.parametrize(("extra", "message"), [
    (["--batch", "--to", "s3://b/x"], "exactly one of --studies FILE and --query"),
    (["--batch", "--study", "1.2.3", "--to", "s3://b/x"], "not --study/--series"),
    (["--batch", "--query", "Modality=MR"], "needs --to"),
    (["--batch", "--query", "Modality", "--to", "s3://b/x"], "is not KEY=VALUE"),
    ([], "give --study UID"),
])
def test_batch_inputs_are_checked(extra: list[str], message: str) -> None:
    result = CliRunner().invoke(infer, ["--endpoint", "e", *extra])
    assert result.exit_code != 0
    assert message in (result.output + str(result.exception))


def test_study_list() -> None:
    assert read_study_list(["# comment", "1.2.3", "", "1.2.3  # again", "1.2.4"]) == ["1.2.3", "1.2.4"]
    with pytest.raises(EndpointError, match="line 2: 'x.y' is not a StudyInstanceUID"):
        read_study_list(["1.2", "x.y"])
    with pytest.raises(EndpointError, match="empty"):
        read_study_list(["# nothing"])
