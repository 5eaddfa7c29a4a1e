"""What the CLI prints is what a user copies: emoji codes stay text and long values fold, never cut."""

from __future__ import annotations

import io

from dicomflow.cli.common import make_console, value_table

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dicomflow-pacs-AbCdEf"
URI = "s3://dicomflow-demo-artifactsbucket-v6g3c0kzs03m/models/demo-full-s0/segmentation3d/output/model.tar.gz"
UID = "2.25.306571525636336820469089796037752933880"


def _printed(renderable, width: int = 60) -> str:
    buffer = io.StringIO()
    make_console(file=buffer, width=width).print(renderable)
    return buffer.getvalue()


def test_emoji_codes_in_values_are_printed_as_written() -> None:
    assert ":secret:" in _printed(f"secret {ARN}", width=200)


def test_table_cells_fold_long_values_instead_of_cutting_them() -> None:
    table = value_table("what", "value")
    for name, value in (("secret", ARN), ("model", URI), ("series", UID)):
        table.add_row(name, value)
    text = _printed(table, width=60)
    assert "…" not in text
    cells = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3)
    for value in (ARN, URI, UID):
        assert value in cells  # every character, in order, across the folded lines
