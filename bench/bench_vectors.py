"""k-NN image search over 1024-d unit vectors: the image index against the brute-force floor.

For each index size N (random unit vectors, 1024-d float32, as the classifier's embeddings are), times one
query for its k=10 nearest, in milliseconds per query, median (min-max) over ``--repeats`` passes of
``--queries`` queries, interleaved:

* ``floor``: ``unit @ q`` then ``np.argpartition`` and a sort of the top k (numpy's BLAS matrix-vector
  product over the whole matrix in memory: the least any exact search does);
* ``ours exact``: :meth:`dicomflow.search.vectors.VectorIndex.similar` with the graph searched exactly
  (usearch's SIMD brute force, what the index does up to ``EXACT_BELOW`` vectors), rows joined from SQLite;
* ``ours HNSW``: the same through the HNSW graph (what it does above ``EXACT_BELOW``), with its recall@10
  against the floor's exact answer;
* ``naive``: Python's ``sorted`` over per-vector ``np.dot`` (a loop over the rows, as a first version
  would be written).

Also the time to add N vectors (rows + graph) once. Target: HNSW at least 10x faster than the floor at
100 000 vectors with recall@10 >= 0.95; exact search within 2x of the floor.

Run: ``.venv/bin/python bench/bench_vectors.py [--sizes 1000,20000,100000] [--repeats 5] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
from _stats import check_repeats, interleaved, ratio, table

import dicomflow.search.vectors as vectors
from dicomflow.search.vectors import ImageVector, VectorIndex

DIM = 1024
K = 10


def _uid(kind: int, i: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{kind}.{i}"


def _one_size(n: int, rng: np.random.Generator, n_queries: int, repeats: int) -> tuple[dict, float, float]:
    """(ms per query of each way, HNSW recall@10, seconds to add the n vectors)."""
    unit = rng.standard_normal((n, DIM)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    queries = rng.standard_normal((n_queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp, VectorIndex.open(tmp, model={"name": "bench", "version": "1"},
                                                                dimensions=DIM) as ix:
        t0 = time.perf_counter()
        ix.add(ImageVector(_uid(1, i), _uid(2, i), unit[i]) for i in range(n))
        add_s = time.perf_counter() - t0

        def floor() -> list[np.ndarray]:
            out = []
            for q in queries:
                s = unit @ q
                top = np.argpartition(-s, K)[:K]
                out.append(top[np.argsort(-s[top])])
            return out

        def search(exact_below: int) -> list[list[str]]:
            vectors.EXACT_BELOW = exact_below
            return [[x.sop_uid for x in ix.similar(q, K)] for q in queries]

        def naive() -> list[list[int]]:  # two queries only: it is slow
            return [sorted(range(n), key=lambda i, q=q: -float(np.dot(unit[i], q)))[:K] for q in queries[:2]]

        fns = {"floor": floor, "ours exact": lambda: search(n + 1), "ours HNSW": lambda: search(0)}
        if n <= 20_000:
            fns["naive"] = naive
        try:
            speed = interleaved(fns, repeats)
            truth = [{_uid(1, int(i)) for i in top} for top in floor()]
            recall = float(np.mean([len(set(found) & t) / K for found, t in zip(search(0), truth, strict=True)]))
        finally:
            vectors.EXACT_BELOW = 20_000
    per_query = {k: type(v)(tuple(x / (2 if k == "naive" else n_queries) for x in v.values)) for k, v in speed.items()}
    return per_query, recall, add_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000,100000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    repeats = check_repeats(args.repeats)
    rng = np.random.default_rng(0)
    rows, figures = [], {}
    for n in (int(s) for s in args.sizes.split(",")):
        per_query, recall, add_s = _one_size(n, rng, args.queries, repeats)
        for name, sample in per_query.items():
            rows.append([f"{n:,}", name, sample.text(3), f"{ratio(sample, per_query['floor']):.2f}",
                         f"{recall:.3f}" if name == "ours HNSW" else ("1.000" if name != "naive" else "")])
        rows.append([f"{n:,}", "add all (s)", f"{add_s:.2f}", "", ""])
        figures[str(n)] = {"ms_per_query": {k: v.as_dict(4) for k, v in per_query.items()},
                           "hnsw_recall_at_10": recall, "add_seconds": round(add_s, 2)}
    if args.json:
        print(json.dumps(figures))
        return
    print(f"k={K} nearest of 1024-d unit vectors, ms per query, median (min-max) over {repeats} passes")
    print(table(["vectors", "way", "ms/query", "x floor", "recall@10"], rows))


if __name__ == "__main__":
    main()
