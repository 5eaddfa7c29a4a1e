"""The embedded image index: exact neighbours on small sets, exclusions, filters, persistence, refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from dicomflow.search.vectors import GRAPH_FILE, ImageIndexError, ImageVector, VectorIndex

MODEL = {"name": "chest", "version": "3"}
DIM = 16


def _uid(kind: int, n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{kind}.{n}"


def _images(n: int, seed: int = 0, per_study: int = 2) -> tuple[list[ImageVector], np.ndarray]:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    items = [ImageVector(sop_uid=_uid(1, i), study_uid=_uid(2, i // per_study), vector=vectors[i],
                         modality="DX" if i % 3 else "CR", labels=("Edema",) if i % 2 else ("No Finding",),
                         view_position="AP" if i % 5 == 0 else "PA", body_part="CHEST")
             for i in range(n)]
    return items, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _brute_force(unit: np.ndarray, query: np.ndarray, skip: set[int]) -> list[int]:
    scores = unit @ (query / np.linalg.norm(query))
    return [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in skip]


def test_neighbours_are_ranked_and_scored_like_brute_force_cosine(tmp_path: Path) -> None:
    items, unit = _images(200)
    with VectorIndex.open(tmp_path / "ix", model=MODEL, dimensions=DIM) as ix:
        assert ix.add(items) == 200 and len(ix) == 200
        query = np.random.default_rng(9).standard_normal(DIM)
        found = ix.similar(query, k=10)
    expected = _brute_force(unit, query, set())[:10]
    assert [n.sop_uid for n in found] == [_uid(1, i) for i in expected]
    assert [n.rank for n in found] == list(range(1, 11))
    scores = [n.score for n in found]
    assert scores == sorted(scores, reverse=True)
    q = query / np.linalg.norm(query)
    assert scores[0] == pytest.approx(float(unit[expected[0]] @ q), abs=1e-5)


def test_the_graph_of_a_large_index_finds_almost_all_true_neighbours(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("dicomflow.search.vectors.EXACT_BELOW", 0)  # the HNSW graph answers
    items, unit = _images(2000, seed=3)
    queries = np.random.default_rng(4).standard_normal((50, DIM))
    with VectorIndex.open(tmp_path / "ix", model=MODEL, dimensions=DIM) as ix:
        ix.add(items)
        hits = [len({n.sop_uid for n in ix.similar(q, k=10)} & {_uid(1, i) for i in _brute_force(unit, q, set())[:10]})
                for q in queries]
    assert sum(hits) / (10 * len(queries)) >= 0.95  # recall@10 of HNSW on 2000 vectors


def test_similar_to_an_image_leaves_out_the_image_and_its_study(tmp_path: Path) -> None:
    items, unit = _images(60, per_study=3)
    with VectorIndex.open(tmp_path / "ix", model=MODEL, dimensions=DIM) as ix:
        ix.add(items)
        found = ix.similar_to(_uid(1, 4), k=5)
        with_study = ix.similar_to(_uid(1, 4), k=5, same_study=True)
    study = {3, 4, 5}  # images 3..5 are study 1
    assert [n.sop_uid for n in found] == [_uid(1, i) for i in _brute_force(unit, unit[4], study)[:5]]
    assert all(n.study_uid != _uid(2, 1) for n in found)
    assert _uid(1, 4) not in {n.sop_uid for n in with_study}
    assert [n.sop_uid for n in with_study] == [_uid(1, i) for i in _brute_force(unit, unit[4], {4})[:5]]


def test_filters_keep_k_results_of_the_asked_modality_and_label(tmp_path: Path) -> None:
    items, unit = _images(300)
    with VectorIndex.open(tmp_path / "ix", model=MODEL, dimensions=DIM) as ix:
        ix.add(items)
        found = ix.similar(unit[7], k=8, modality="CR", label="No Finding")
    wanted = [i for i in _brute_force(unit, unit[7], set()) if i % 3 == 0 and i % 2 == 0][:8]
    assert [n.sop_uid for n in found] == [_uid(1, i) for i in wanted]
    assert all(n.modality == "CR" and n.labels == ("No Finding",) for n in found)
    with VectorIndex.open(tmp_path / "ix") as ix:
        views = ix.similar(unit[7], k=4, view_position="AP", body_part="CHEST")
        assert ix.similar(unit[7], k=4, body_part="ABDOMEN") == []
    expected = [i for i in _brute_force(unit, unit[7], set()) if i % 5 == 0][:4]
    assert [n.sop_uid for n in views] == [_uid(1, i) for i in expected]
    assert all((n.view_position, n.body_part) == ("AP", "CHEST") for n in views)


def test_an_index_from_before_the_view_and_body_part_columns_opens_and_filters(tmp_path: Path) -> None:
    import sqlite3

    items, unit = _images(30)
    with VectorIndex.open(tmp_path / "ix", model=MODEL, dimensions=DIM) as ix:
        ix.add(items)
    db = sqlite3.connect(tmp_path / "ix" / "images.sqlite")
    db.execute("ALTER TABLE images DROP COLUMN view_position")
    db.execute("ALTER TABLE images DROP COLUMN body_part")
    db.commit()
    db.close()
    with VectorIndex.open(tmp_path / "ix") as old:
        assert len(old.similar(unit[0], k=5)) == 5 and old.similar(unit[0], k=5, view_position="AP") == []


def test_the_index_persists_replaces_by_uid_removes_and_rebuilds_a_stale_graph(tmp_path: Path) -> None:
    items, unit = _images(40)
    where = tmp_path / "ix"
    with VectorIndex.open(where, model=MODEL, dimensions=DIM) as ix:
        ix.add(items)
        ix.add([ImageVector(sop_uid=_uid(1, 0), study_uid=_uid(2, 0), vector=-unit[0])])  # re-embedded
        assert ix.remove([_uid(1, 1), _uid(1, 999)]) == 1
        assert len(ix) == 39
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    with VectorIndex.open(where) as again:
        assert again.model == MODEL and again.dimensions == DIM and len(again) == 39
        assert np.allclose(again.vector_of(_uid(1, 0)), -unit[0], atol=1e-6)
        assert again.similar(-unit[0], k=1)[0].sop_uid == _uid(1, 0)
        assert _uid(1, 1) not in {n.sop_uid for n in again.similar(unit[1], k=39)}
    (where / GRAPH_FILE).unlink()  # the graph is derived: it is rebuilt from the rows
    with VectorIndex.open(where) as rebuilt:
        assert rebuilt.similar(-unit[0], k=1)[0].sop_uid == _uid(1, 0)


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ImageIndexError, match="no image index in"):
        VectorIndex.open(tmp_path / "missing")
    with VectorIndex.open(tmp_path / "ix", model=MODEL, dimensions=DIM) as ix:
        with pytest.raises(ImageIndexError, match="has 3 values; this index holds 16-d vectors"):
            ix.add([ImageVector(_uid(1, 1), _uid(2, 1), [1.0, 2.0, 3.0])])
        with pytest.raises(ImageIndexError, match="all zeros"):
            ix.add([ImageVector(_uid(1, 1), _uid(2, 1), np.zeros(DIM))])
        with pytest.raises(ImageIndexError, match="not finite"):
            ix.similar([float("nan")] * DIM)
        with pytest.raises(ImageIndexError, match="is not a DICOM UID"):
            ix.add([ImageVector("1.2.x", _uid(2, 1), np.ones(DIM))])
        with pytest.raises(ImageIndexError, match="k must be a whole number from 1 to 1000"):
            ix.similar(np.ones(DIM), k=0)
        with pytest.raises(ImageIndexError, match="is not in the index"):
            ix.similar_to(_uid(1, 5))
        assert ix.similar(np.ones(DIM), k=5) == []  # an empty index answers with no neighbours
    with pytest.raises(ImageIndexError, match="holds vectors of chest 3, not chest 4; re-embed"):
        VectorIndex.open(tmp_path / "ix", model={"name": "chest", "version": "4"}, dimensions=DIM)


def _add_one_by_one(where: str, start: int, count: int) -> None:
    items, _ = _images(start + count, seed=5)
    with VectorIndex.open(where, model=MODEL, dimensions=DIM) as ix:
        for item in items[start:]:
            ix.add([item])


def _saved_graph_size(where: Path) -> int:
    from usearch.index import Index

    return len(Index.restore(str(where / GRAPH_FILE)))


def test_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    """Four processes adding images one at a time (as concurrent ingestion Lambdas do) into one index: every
    row is there and the saved graph holds all of them (a writer catches up before it writes)."""
    import multiprocessing

    where = tmp_path / "ix"
    with VectorIndex.open(where, model=MODEL, dimensions=DIM) as stale:  # opened before the others write
        procs = [multiprocessing.get_context("spawn").Process(target=_add_one_by_one, args=(str(where), 30 * n, 30))
                 for n in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        assert len(stale) == 120 and _saved_graph_size(where) == 120
        extra, _ = _images(121, seed=5)
        stale.add([ImageVector(sop_uid=_uid(1, 500), study_uid=_uid(2, 500), vector=extra[0].vector)])
    assert _saved_graph_size(where) == 121  # the stale writer's graph took in the 120 written meanwhile
    items, unit = _images(120, seed=5)
    with VectorIndex.open(where) as ix:
        assert len(ix) == 121
        assert np.allclose(ix.vector_of(_uid(1, 77)), unit[77], atol=1e-6)
