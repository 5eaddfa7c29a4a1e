"""Where things are: the repository checkout, and folders that hold PHI or secrets (owner-only: 0700
folders, 0600 files, fixed when found wider)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: The checkout this package runs from (``labeling_ui/``, ``lambdas/``, ``training_job/`` ... beside it).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The variable that names the local cloud's data dir, and the data dir when it is unset.
DATA_DIR_ENV = "DICOMFLOW_HOME"
DEFAULT_DATA_DIR = "~/.dicomflow"


def data_dir(explicit: str | Path | None = None) -> Path:
    """The local cloud's data dir: ``explicit``, else ``$DICOMFLOW_HOME``, else ``~/.dicomflow`` (absolute)."""
    chosen = explicit or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().absolute()


def image_index_dir(data: Path) -> Path:
    """The embedded image index of a data dir (what ``dicomflow search`` and the local cloud's ingestion use)."""
    return Path(data) / "search" / "images"


def report_index_path(data: Path) -> Path:
    """The embedded report index (SQLite) of a data dir (what ``dicomflow search`` and the local search API use)."""
    return Path(data) / "search" / "reports.sqlite"


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """``path`` as a directory only its owner can enter (created with its parents if missing)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def restrict_tree(root: str | Path) -> int:
    """Make every folder under ``root`` 0700 and every file 0600 (group/other bits removed); the count changed."""
    changed = 0
    root = Path(root)
    if not root.exists():
        return 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name, mode in [(dirpath, PRIVATE_DIR_MODE)] + [(os.path.join(dirpath, f), PRIVATE_FILE_MODE)
                                                          for f in filenames]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(name, stat.S_IMODE(st.st_mode) & 0o700 | (mode & 0o600))
                changed += 1
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return changed
