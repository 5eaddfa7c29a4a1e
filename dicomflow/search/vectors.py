"""The embedded image index: k-nearest-neighbour search over one model's embeddings.

An index is a directory (0700: it holds study identifiers) with two files:

* ``images.sqlite`` - the truth: one row per image (SOP Instance UID, series and study UIDs,
  accession, modality, labels, thumbnail URI) with its float32 vector, and the model (name,
  version, dimensions) every vector came from. Vectors of another model are refused: re-embed into a
  new index when the model changes (``dicomflow search index --rebuild``).
* ``images.usearch`` - the HNSW graph (usearch, cosine), derived from the rows and rebuilt from them
  when it is missing or does not match them (its generation is recorded beside the rows).

Writers in several processes (the local cloud's ingestion Lambdas, the CLI) take turns: each write holds
an exclusive lock on ``write.lock`` in the directory, first catches up with what others wrote since it
loaded the graph, then commits the rows and saves the graph.

Small indexes are searched exactly, large ones through the graph (``EXACT_BELOW``). Results carry
their rank (1 = nearest) and score (cosine similarity, 1 = same direction); the query
image is never among them, nor by default the other images of its study.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index

from dicomflow.dicom.uid import is_uid
from dicomflow.paths import PRIVATE_FILE_MODE, private_dir
from dicomflow.search.embeddings import ImageIndexError

DB_FILE = "images.sqlite"
GRAPH_FILE = "images.usearch"
LOCK_FILE = "write.lock"
#: Seconds a connection waits for another process's SQLite transaction.
BUSY_TIMEOUT_S = 30.0
MAX_K = 1000
#: Up to this many vectors a query compares against all of them (exact, and about as fast as the HNSW
#: graph there: see bench/bench_vectors.py); above it the graph answers (approximate, much faster).
EXACT_BELOW = 2_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    key INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL UNIQUE,
    series_uid TEXT,
    study_uid TEXT NOT NULL,
    accession TEXT,
    modality TEXT,
    view_position TEXT,
    body_part TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    thumbnail TEXT,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_study ON images (study_uid);
"""


@dataclass(frozen=True)
class ImageVector:
    """One image's embedding and what a result shows of it."""

    sop_uid: str
    study_uid: str
    vector: Sequence[float] | np.ndarray
    series_uid: str | None = None
    accession: str | None = None
    modality: str | None = None
    labels: tuple[str, ...] = ()
    view_position: str | None = None
    body_part: str | None = None
    thumbnail: str | None = None


@dataclass(frozen=True)
class Neighbour:
    """A result: rank 1 is the nearest; score is the cosine similarity to the query."""

    rank: int
    score: float
    sop_uid: str
    study_uid: str
    series_uid: str | None
    accession: str | None
    modality: str | None
    labels: tuple[str, ...] = field(default_factory=tuple)
    thumbnail: str | None = None
    view_position: str | None = None
    body_part: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": round(self.score, 6), "sopInstanceUID": self.sop_uid,
                "studyInstanceUID": self.study_uid, "seriesInstanceUID": self.series_uid,
                "accessionNumber": self.accession, "modality": self.modality, "viewPosition": self.view_position,
                "bodyPart": self.body_part, "labels": list(self.labels), "thumbnail": self.thumbnail}


def unit_vector(vector: Sequence[float] | np.ndarray, dimensions: int, what: str) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.size != dimensions:
        raise ImageIndexError(f"{what} has {v.size} values; this index holds {dimensions}-d vectors")
    if not np.all(np.isfinite(v)):
        raise ImageIndexError(f"{what} holds values that are not finite numbers")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ImageIndexError(f"{what} is all zeros: it has no direction to compare")
    return v / norm


def check_k(k: object) -> int:
    """``k`` if it is a whole number from 1 to :data:`MAX_K`, else ImageIndexError."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ImageIndexError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
    return k


def checked_row(item: ImageVector, dimensions: int) -> np.ndarray:
    """The unit vector of ``item`` after its UIDs are checked (what every backend stores)."""
    for uid, what in ((item.sop_uid, "sopInstanceUID"), (item.study_uid, "studyInstanceUID")):
        if not is_uid(uid):
            raise ImageIndexError(f"{what} {str(uid)[:70]!r} is not a DICOM UID")
    return unit_vector(item.vector, dimensions, f"the vector of {item.sop_uid}")


class VectorIndex:
    """One model's image embeddings; not safe to share between threads (open one per thread)."""

    def __init__(self, directory: Path, db: sqlite3.Connection, model: dict[str, str], dimensions: int) -> None:
        self.directory = directory
        self._db = db
        self.model = model
        self.dimensions = dimensions
        self._loaded = self._generation()
        self._graph = self._load_graph()

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path, *, model: Mapping[str, str] | None = None,
             dimensions: int | None = None) -> VectorIndex:
        """Open the index in ``directory``; with ``model`` and ``dimensions``, create it if it is new
        (an existing index of another model is refused)."""
        path = Path(directory)
        if not (path / DB_FILE).is_file() and model is None:
            raise ImageIndexError(f"no image index in {path}; build one with 'dicomflow search index'")
        private_dir(path)
        db_path = path / DB_FILE
        try:
            db = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S)
            os.chmod(db_path, PRIVATE_FILE_MODE)
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            for column in ("view_position", "body_part"):  # an index from before these filters
                if column not in columns:
                    db.execute(f"ALTER TABLE images ADD COLUMN {column} TEXT")  # noqa: S608 - constant names
            meta = dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as exc:
            raise ImageIndexError(f"{db_path} is not a usable image index: {exc}") from None
        if not meta:
            if model is None or not dimensions:
                raise ImageIndexError(f"{db_path} is empty; give the model and dimensions to create it")
            meta = {"model_name": str(model["name"]), "model_version": str(model["version"]),
                    "dimensions": str(int(dimensions)), "generation": "0"}
            with db:
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        stored = {"name": meta["model_name"], "version": meta["model_version"]}
        if model is not None and {"name": str(model["name"]), "version": str(model["version"])} != stored:
            raise ImageIndexError(f"the index in {path} holds vectors of {stored['name']} {stored['version']}, not "
                              f"{model['name']} {model['version']}; re-embed into a new index "
                              "('dicomflow search index --rebuild')")
        return cls(path, db, stored, int(meta["dimensions"]))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def refresh(self) -> None:
        """Reload the graph when another process has written since it was loaded (a long-lived reader)."""
        now = self._generation()
        if now != self._loaded:
            self._loaded, self._graph = now, self._load_graph()

    # ---- the graph -----------------------------------------------------------------------------
    def _generation(self) -> str:
        return self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]

    def _new_graph(self) -> Index:
        return Index(ndim=self.dimensions, metric="cos", dtype="f32")

    def _load_graph(self) -> Index:
        """The saved graph if it is of the rows' generation, else one built from the rows."""
        path = self.directory / GRAPH_FILE
        stamp = self.directory / (GRAPH_FILE + ".generation")
        if path.is_file() and stamp.is_file() and stamp.read_text().strip() == self._generation():
            graph = Index.restore(str(path))
            if graph is not None and len(graph) == len(self):
                return graph
        graph = self._new_graph()
        keys, vectors = [], []
        for key, blob in self._db.execute("SELECT key, vector FROM images ORDER BY key"):
            keys.append(key)
            vectors.append(np.frombuffer(blob, dtype=np.float32))
        if keys:
            graph.add(np.asarray(keys, dtype=np.uint64), np.stack(vectors))
        return graph

    def _save_graph(self) -> None:
        """Write the graph (atomically) and stamp it with the rows' generation."""
        path = self.directory / GRAPH_FILE
        tmp = path.with_suffix(".tmp")
        self._graph.save(str(tmp))
        os.chmod(tmp, PRIVATE_FILE_MODE)
        os.replace(tmp, path)
        (self.directory / (GRAPH_FILE + ".generation")).write_text(self._generation() + "\n")

    # ---- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's turn to write: an exclusive lock, and the graph of the rows as they are now."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = self._generation()
            if now != self._loaded:  # another process wrote since this one loaded the graph
                self._loaded, self._graph = now, self._load_graph()
            try:
                yield
            except BaseException:  # the rows were rolled back: the graph in memory follows them again
                self._graph = self._load_graph()
                raise
            self._loaded = self._generation()
            self._save_graph()
        finally:
            os.close(fd)  # releases the lock

    def add(self, items: Iterable[ImageVector]) -> int:
        """Insert or replace images (by SOP Instance UID); returns how many were written."""
        rows = []
        for item in items:
            rows.append((item, checked_row(item, self.dimensions)))
        if not rows:
            return 0
        with self._writing(), self._db:
            old = self._keys_of([item.sop_uid for item, _ in rows])
            for key in old:
                self._graph.remove(key)
            self._db.execute("DELETE FROM images WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(old),))
            start = int(self._db.execute("SELECT COALESCE(MAX(key), 0) + 1 FROM images").fetchone()[0])
            keys = list(range(start, start + len(rows)))
            self._db.executemany(
                "INSERT INTO images (key, sop_uid, series_uid, study_uid, accession, modality, view_position, "
                "body_part, labels, thumbnail, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, i.sop_uid, i.series_uid, i.study_uid, i.accession, i.modality, i.view_position, i.body_part,
                  json.dumps(list(i.labels)), i.thumbnail, v.tobytes())
                 for key, (i, v) in zip(keys, rows, strict=True)])
            self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            self._graph.add(np.asarray(keys, dtype=np.uint64), np.stack([v for _, v in rows]))
        return len(rows)

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Delete images by SOP Instance UID; returns how many there were."""
        uids = list(sop_uids)
        if not uids:
            return 0
        with self._writing(), self._db:
            keys = self._keys_of(uids)
            self._db.execute("DELETE FROM images WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(keys),))
            self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            for key in keys:
                self._graph.remove(key)
        return len(keys)

    def _keys_of(self, sop_uids: list[str]) -> list[int]:
        return [k for (k,) in self._db.execute(
            "SELECT key FROM images WHERE sop_uid IN (SELECT value FROM json_each(?))", (json.dumps(sop_uids),))]

    # ---- reading -------------------------------------------------------------------------------
    def vector_of(self, sop_uid: str) -> np.ndarray:
        """The stored (unit) vector of an image."""
        row = self._db.execute("SELECT vector FROM images WHERE sop_uid = ?", (sop_uid,)).fetchone()
        if row is None:
            raise ImageIndexError(f"image {str(sop_uid)[:70]} is not in the index; add it with "
                              "'dicomflow search index'")
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def study_of(self, sop_uid: str) -> str | None:
        row = self._db.execute("SELECT study_uid FROM images WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return row[0] if row else None

    def images_of_study(self, study_uid: str) -> list[str]:
        return [u for (u,) in self._db.execute("SELECT sop_uid FROM images WHERE study_uid = ? ORDER BY key",
                                               (study_uid,))]

    def study_images(self, study_uid: str) -> list[Neighbour]:
        """The indexed images of a study with their metadata, in index order (rank = position; score 1.0:
        each compared with itself)."""
        rows = self._db.execute(
            "SELECT sop_uid, study_uid, series_uid, accession, modality, labels, thumbnail, view_position, body_part "
            "FROM images WHERE study_uid = ? ORDER BY key LIMIT ?", (study_uid, MAX_K))
        return [Neighbour(n, 1.0, r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8])
                for n, r in enumerate(rows, start=1)]

    def similar(self, vector: Sequence[float] | np.ndarray, k: int = 10, *, exclude_sops: Iterable[str] = (),
                exclude_studies: Iterable[str] = (), modality: str | None = None, label: str | None = None,
                view_position: str | None = None, body_part: str | None = None) -> list[Neighbour]:
        """The ``k`` nearest images to ``vector`` (ranked, scored), leaving out the excluded images and
        studies and keeping only those of ``modality``, ``view_position`` and ``body_part`` and carrying
        ``label`` when given."""
        check_k(k)
        query = unit_vector(vector, self.dimensions, "the query vector")
        total = len(self._graph)
        skip_sops, skip_studies = set(exclude_sops), set(exclude_studies)
        wanted = {"modality": modality, "view_position": view_position, "body_part": body_part}
        wanted = {k_: v for k_, v in wanted.items() if v}
        filtered = bool(skip_sops or skip_studies or wanted or label)
        count = min(total, k if not filtered else max(4 * k, k + len(skip_sops) + 16))
        found: list[Neighbour] = []
        while count > 0:
            matches = self._graph.search(query, count, exact=total <= EXACT_BELOW)
            found = self._rows(list(matches.keys), list(matches.distances), skip_sops, skip_studies, wanted,
                               label, k)
            if len(found) >= k or count >= total:
                break
            count = min(total, count * 4)
        return found

    def _rows(self, keys: list[int], distances: list[float], skip_sops: set[str], skip_studies: set[str],
              wanted: dict[str, str], label: str | None, k: int) -> list[Neighbour]:
        if not keys:
            return []
        rows = {r[0]: r for r in self._db.execute(
            "SELECT key, sop_uid, study_uid, series_uid, accession, modality, labels, thumbnail, view_position, "
            "body_part FROM images WHERE key IN (SELECT value FROM json_each(?))",
            (json.dumps([int(x) for x in keys]),))}
        out: list[Neighbour] = []
        for key, distance in zip(keys, distances, strict=True):
            row = rows.get(int(key))
            if row is None or row[1] in skip_sops or row[2] in skip_studies:
                continue
            labels = tuple(json.loads(row[6]))
            have = {"modality": row[5], "view_position": row[8], "body_part": row[9]}
            if any(have[f] != v for f, v in wanted.items()) or (label and label not in labels):
                continue
            score = 1.0 - float(distance)
            out.append(Neighbour(len(out) + 1, score if math.isfinite(score) else 0.0, row[1], row[2], row[3],
                                 row[4], row[5], labels, row[7], row[8], row[9]))
            if len(out) == k:
                break
        return out

    def similar_to(self, sop_uid: str, k: int = 10, *, same_study: bool = False, **filters: Any) -> list[Neighbour]:
        """The ``k`` images nearest to an indexed image: never the image itself, and not the other
        images of its study unless ``same_study``."""
        vector = self.vector_of(sop_uid)
        studies = () if same_study else (self.study_of(sop_uid) or "",)
        return self.similar(vector, k, exclude_sops=(sop_uid,), exclude_studies=studies, **filters)
