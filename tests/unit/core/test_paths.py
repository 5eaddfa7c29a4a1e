"""Data dirs that hold PHI are owner-only, and wider modes left by older versions are narrowed."""

from __future__ import annotations

import os

from dicomflow.paths import private_dir, restrict_tree


def test_private_dir_is_created_and_fixed_0700(tmp_path) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert made.stat().st_mode & 0o777 == 0o700
    os.chmod(made, 0o755)
    private_dir(made)
    assert made.stat().st_mode & 0o777 == 0o700


def test_restrict_tree_removes_group_and_other_bits(tmp_path) -> None:
    root = tmp_path / "storage"
    (root / "ab" / "cd").mkdir(parents=True)
    files = [root / "index", root / "ab" / "cd" / "instance"]
    for f in files:
        f.write_bytes(b"DICM")
        os.chmod(f, 0o644)
    for d in (root, root / "ab", root / "ab" / "cd"):
        os.chmod(d, 0o755)
    assert restrict_tree(root) == 5
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert all(d.stat().st_mode & 0o777 == 0o700 for d in (root, root / "ab", root / "ab" / "cd"))
    assert restrict_tree(root) == 0
