"""The search API for people: what the GraphQL API over HTTP adds to the search engine, and the page's time.

A private local cloud (emulated Cognito and S3); 10 000 synthetic chest reports analysed into the embedded
report index, 10 000 clustered 1024-d image vectors (as ``bench_vectors``) with thumbnails named in S3, the
local search server over them in this process, a radiologist signed in. Per request, milliseconds, p50 and
p95 over every request of ``--repeats`` passes, the ways interleaved within each pass:

* ``engine``: the engine called directly in this process (the floor: what any API over it must do);
* ``API``: the same question as a GraphQL POST over a kept-alive HTTP connection, the token checked against
  the pool's JWKS (cached), the query parsed, validated, depth- and cost-checked, the resolver run, the
  thumbnails' links presigned, the answer encoded;
* ``API me``: ``{ me { username } }`` over the same path (transport, token and GraphQL with no engine work).

Questions: a text search with facets (``reports(text, first: 20)`` + ``facets(text, first: 10)``, five
finding words in turn) and a similar-image query (``similarImages(image, k: 10)``, random indexed images).
Then the page in headless Chromium: from pressing Enter in the search box to the result list drawn.

Run: ``.venv/bin/python bench/bench_search_api.py [--items 10000] [--requests 40] [--repeats 5] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from _cloud import private_cloud
from _stats import check_repeats, table

from dicomflow import aws
from dicomflow.api.users import sign_in
from dicomflow.demo.reports import chest_report
from dicomflow.demo.synthetic import _chest_labels
from dicomflow.search.report_index import ReportIndex
from dicomflow.search.reports import RuleEngine
from dicomflow.search.vectors import ImageVector, VectorIndex

DIM = 1024
WORDS = ["effusion", "pneumothorax", "cardiomegaly", "edema", "consolidation"]
SEARCH_Q = """query($text: String) {
  reports(text: $text, first: 20) { total nextCursor reports { studyInstanceUID score snippet
                                    mentions { code status begin end text } } }
  facets(text: $text, first: 10) { code description kind reports parent mentioned } }"""
SIMILAR_Q = """query($image: ID) { similarImages(image: $image, k: 10) {
  query model { name version } neighbours { rank score image { sopInstanceUID studyInstanceUID modality labels
                                                               thumbnailUrl } } } }"""


def _uid(kind: int, i: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.{kind}.{i}"


def _seed(where: Path, n: int, rng: np.random.Generator) -> None:
    engine = RuleEngine()
    with ReportIndex.open(where / "reports.sqlite") as ix:
        for i in range(n):
            report = chest_report(_chest_labels(np.random.default_rng([11, 1, i])), f"bench-{i}", seed=11)
            ix.add(_uid(1, i), report.text, engine.infer_icd10cm(report.text), accession=f"B{i}")
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    with VectorIndex.open(where / "images", model={"name": "chest", "version": "1"}, dimensions=DIM) as ix:
        ix.add([ImageVector(_uid(2, i), _uid(1, i), x[i], modality="DX", labels=("Edema",) if i % 3 == 0 else (),
                            thumbnail=f"s3://bench-thumbnails/search/thumbnails/{i}.png") for i in range(n)])


def _percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "min": float(a.min()),
            "max": float(a.max()), "n": len(values)}


def _page_ms(url: str, user: str, password: str, repeats: int) -> list[float]:
    from playwright.sync_api import sync_playwright
    from search_api_setup import sign_in_page

    from dicomflow.demo.annotators import CHROMIUM, CHROMIUM_ARGS

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        sign_in_page(page, url, user, password)
        page.wait_for_selector("#results [data-testid=hit]")  # the listing drawn at sign-in, out of the way
        for r in range(repeats * len(WORDS)):
            page.evaluate("document.getElementById('results').replaceChildren()")
            page.fill("#search-text", WORDS[r % len(WORDS)])
            t0 = time.perf_counter()
            page.press("#search-text", "Enter")
            page.wait_for_selector("#results [data-testid=hit]")
            out.append((time.perf_counter() - t0) * 1000)
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="reports and images each")
    parser.add_argument("--requests", type=int, default=40, help="requests per way per pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    repeats = check_repeats(args.repeats)
    rng = np.random.default_rng(3)
    from search_api_setup import seeded_pools, serving

    with private_cloud() as cloud, tempfile.TemporaryDirectory() as tmp, seeded_pools("bench-search") as pools:
        where = Path(tmp)
        t0 = time.perf_counter()
        _seed(where, args.items, rng)
        seeded_s = time.perf_counter() - t0
        aws.client("s3").create_bucket(Bucket="bench-thumbnails")
        page_dir = Path(__file__).resolve().parents[1] / "search_ui" / "dist"
        with serving(cloud.settings, pools, where, page_dir) as url, \
                ReportIndex.open(where / "reports.sqlite", create=False) as reports, \
                VectorIndex.open(where / "images") as images:
            token = sign_in(pools["client"], "dr-rad", pools["passwords"]["dr-rad"])["IdToken"]
            http = requests.Session()

            def api(query: str, variables: dict) -> None:
                resp = http.post(f"{url}/graphql", json={"query": query, "variables": variables},
                                 headers={"Authorization": token}, timeout=60)
                doc = resp.json()
                if resp.status_code != 200 or "errors" in doc:
                    raise SystemExit(f"the API answered {resp.status_code}: {json.dumps(doc)[:300]}")

            sops = [_uid(2, int(i)) for i in rng.integers(0, args.items, args.requests)]
            ways = {
                "search": {"engine": lambda w: (reports.search(w, limit=20), reports.facets(w, status="positive",
                                                                                             limit=10)),
                           "API": lambda w: api(SEARCH_Q, {"text": w}),
                           "API me": lambda w: api("{ me { username } }", {})},
                "similar": {"engine": lambda s: images.similar_to(s, 10),
                            "API": lambda s: api(SIMILAR_Q, {"image": s}),
                            "API me": lambda s: api("{ me { username } }", {})},
            }
            times: dict[str, dict[str, list[float]]] = {q: {w: [] for w in ws} for q, ws in ways.items()}
            for question, fns in ways.items():
                args_of = [WORDS[i % len(WORDS)] for i in range(args.requests)] if question == "search" else sops
                for fn in fns.values():  # warm-up: caches, JWKS, connections
                    fn(args_of[0])
                for _ in range(repeats):
                    for a in args_of:
                        for name, fn in fns.items():
                            t = time.perf_counter()
                            fn(a)
                            times[question][name].append((time.perf_counter() - t) * 1000)
            page = _page_ms(url, "dr-rad", pools["passwords"]["dr-rad"], repeats)
    stats = {q: {w: _percentiles(v) for w, v in ws.items()} for q, ws in times.items()}
    stats["page"] = {"submit to results drawn": _percentiles(page)}
    if args.json:
        print(json.dumps({"items": args.items, "seed_seconds": round(seeded_s, 1), "ms": stats}))
        return
    print(f"{args.items:,} reports and {args.items:,} images of 1024-d (seeded in {seeded_s:.0f} s); "
          f"{args.requests} requests x {repeats} passes per way")
    rows = []
    for q in ("search", "similar"):
        floor = stats[q]["engine"]["p50"]
        for w, st in stats[q].items():
            rows.append([q, w, f"{st['p50']:.2f}", f"{st['p95']:.2f}", f"{st['min']:.2f}-{st['max']:.2f}",
                         f"{st['p50'] / floor:.2f}", f"{st['p50'] - floor:+.2f}" if w == "API" else ""])
    st = stats["page"]["submit to results drawn"]
    rows.append(["page", "Chromium", f"{st['p50']:.2f}", f"{st['p95']:.2f}", f"{st['min']:.2f}-{st['max']:.2f}", "",
                 ""])
    print(table(["question", "way", "p50 ms", "p95 ms", "min-max", "x engine", "API adds"], rows))


if __name__ == "__main__":
    main()
