"""The viewer's DICOMweb is QIDO-RS and WADO-RS only: reads of standard resources pass, writes and the rest don't."""

from __future__ import annotations

import pytest

from dicomflow.emulator.viewer import readonly

S, SE, IN = "1.2.840.1", "1.2.840.1.2", "1.2.840.1.2.3"


@pytest.mark.parametrize("path", [
    "studies", "series", "instances", f"studies/{S}", f"studies/{S}/metadata", f"studies/{S}/series",
    f"studies/{S}/instances", f"studies/{S}/thumbnail", f"studies/{S}/series/{SE}", f"studies/{S}/series/{SE}/metadata",
    f"studies/{S}/series/{SE}/instances", f"studies/{S}/series/{SE}/rendered",
    f"studies/{S}/series/{SE}/instances/{IN}",
    f"studies/{S}/series/{SE}/instances/{IN}/metadata", f"studies/{S}/series/{SE}/instances/{IN}/frames/1",
    f"studies/{S}/series/{SE}/instances/{IN}/frames/1,2,3", f"studies/{S}/series/{SE}/instances/{IN}/frames/2/rendered",
    f"studies/{S}/series/{SE}/instances/{IN}/bulk/7fe00010",
    f"studies/{S}/series/{SE}/instances/{IN}/bulk/00420011",
    f"studies/{S}/series/{SE}/instances/{IN}/bulk/00540016/0/00181072",
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reads_of_standard_resources_pass(method: str, path: str) -> None:
    readonly.check(method, path)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_every_method_that_could_write_is_405(method: str) -> None:
    with pytest.raises(readonly.NotReadOnly) as refused:
        readonly.check(method, "studies")
    assert refused.value.status == 405


@pytest.mark.parametrize("path", [
    "", "servers", "servers/remote/stow", "info", "studies/../../tools/reset", f"studies/{S}/series/../../..",
    "studies/abc", f"studies/{S}/reject", f"studies/{S}/series/{SE}/instances/{IN}/frames/0",
    f"studies/{S}/series/{SE}/instances/{IN}/frames/1;2", f"studies/{S}/series/{SE}/instances/{IN}/frames/",
    f"studies/{S}/series/{SE}/instances/{IN}/bulk/7fe0", f"studies/{S}/series/{SE}/instances/{IN}/bulk/7fe00010/1",
    f"studies/{S}/instances/{IN}", f"studies/{S}/series/{SE}/instances/{IN}/other", f"studies/{'1.' * 40}1",
    f"studies/{S}/series/{SE}/instances/{IN}/frames/1/rendered/more",
])
def test_other_paths_are_403(path: str) -> None:
    with pytest.raises(readonly.NotReadOnly) as refused:
        readonly.check("GET", path)
    assert refused.value.status == 403
