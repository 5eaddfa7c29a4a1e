"""The image index on Amazon OpenSearch k-NN: the same interface as :class:`dicomflow.search.vectors.VectorIndex`.

One OpenSearch index per model: a ``knn_vector`` field (HNSW, the Lucene engine, ``cosinesimil``) beside
keyword fields for the filters; the model's name, version and dimensions are in the mapping's ``_meta``
and another model is refused as the embedded index refuses it. Documents are keyed by SOP Instance UID
(an upsert is an ``index`` of that id; a delete removes it). Filters run *inside* the k-NN query (Lucene's
efficient filtering), so a filtered query still returns k results when k exist. OpenSearch scores a
``cosinesimil`` hit ``(1 + cos) / 2``; results carry the cosine like the embedded index's.

Requests are signed with SigV4 (the standard AWS credential chain, service ``es``) over TLS with
certificate checks. No OpenSearch server runs in this project's tests: they check the exact request
bodies and the reading of OpenSearch's answers (``tests/unit/search/test_opensearch.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dicomflow.search.vectors import (
    MAX_K,
    ImageIndexError,
    ImageVector,
    Neighbour,
    check_k,
    checked_row,
    unit_vector,
)

_KEYWORDS = ("sop_uid", "study_uid", "series_uid", "accession", "modality", "view_position", "body_part", "labels",
             "thumbnail")


def index_body(model: Mapping[str, str], dimensions: int) -> dict[str, Any]:
    """The create-index request: k-NN on, the vector field and the filter fields, the model in ``_meta``."""
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {
            "_meta": {"model_name": str(model["name"]), "model_version": str(model["version"]),
                      "dimensions": int(dimensions)},
            "properties": {
                "vector": {"type": "knn_vector", "dimension": int(dimensions),
                           "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
                                      "parameters": {"m": 16, "ef_construction": 128}}},
                **{name: {"type": "keyword"} for name in _KEYWORDS},
            },
        },
    }


def knn_body(vector: np.ndarray, k: int, *, exclude_sops: Sequence[str] = (), exclude_studies: Sequence[str] = (),
             modality: str | None = None, label: str | None = None, view_position: str | None = None,
             body_part: str | None = None) -> dict[str, Any]:
    """The search request: the k nearest with every filter inside the k-NN clause, the vector not returned."""
    must: list[dict[str, Any]] = []
    for name, value in (("modality", modality), ("view_position", view_position), ("body_part", body_part)):
        if value:
            must.append({"term": {name: value}})
    if label:
        must.append({"term": {"labels": label}})
    must_not: list[dict[str, Any]] = []
    if exclude_sops:
        must_not.append({"terms": {"sop_uid": list(exclude_sops)}})
    if exclude_studies:
        must_not.append({"terms": {"study_uid": list(exclude_studies)}})
    knn: dict[str, Any] = {"vector": [float(v) for v in vector], "k": k}
    if must or must_not:
        knn["filter"] = {"bool": {**({"filter": must} if must else {}), **({"must_not": must_not} if must_not else {})}}
    return {"size": k, "_source": {"excludes": ["vector"]}, "query": {"knn": {"vector": knn}}}


def _neighbour(rank: int, hit: Mapping[str, Any]) -> Neighbour:
    src = hit.get("_source") or {}
    return Neighbour(rank, 2.0 * float(hit.get("_score", 0.0)) - 1.0, str(src.get("sop_uid", hit.get("_id"))),
                     str(src.get("study_uid")), src.get("series_uid"), src.get("accession"), src.get("modality"),
                     tuple(src.get("labels") or ()), src.get("thumbnail"), src.get("view_position"),
                     src.get("body_part"))


def connect(url: str, region: str | None = None) -> Any:
    """An ``OpenSearch`` client for ``url`` (https only), requests signed with SigV4 for service ``es``."""
    from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection

    from dicomflow import aws

    if not url.startswith("https://"):
        raise ImageIndexError(f"the OpenSearch URL must be https://, got {url[:80]!r}")
    credentials = aws.session().get_credentials()
    if credentials is None:
        raise ImageIndexError("no AWS credentials to sign OpenSearch requests with; configure a profile")
    auth = AWSV4SignerAuth(credentials, region or aws.region(), "es")
    return OpenSearch(hosts=[url], http_auth=auth, use_ssl=True, verify_certs=True,
                      connection_class=RequestsHttpConnection, timeout=30)


class OpenSearchIndex:
    """One OpenSearch index through ``client`` (an ``opensearchpy.OpenSearch``), used like the embedded ones."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name

    def close(self) -> None:
        """Nothing to release (the client's connections are the caller's)."""

    def refresh(self) -> None:
        """Nothing to reload: every query asks the domain."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.client.count(index=self.name)["count"])


class OpenSearchVectorIndex(OpenSearchIndex):
    """One model's image embeddings in an OpenSearch index."""

    def __init__(self, client: Any, name: str, model: dict[str, str], dimensions: int) -> None:
        super().__init__(client, name)
        self.model, self.dimensions = model, dimensions

    @classmethod
    def open(cls, client: Any, name: str, *, model: Mapping[str, str] | None = None,
             dimensions: int | None = None) -> OpenSearchVectorIndex:
        """Open index ``name``; with ``model`` and ``dimensions`` create it if it does not exist."""
        if not client.indices.exists(index=name):
            if model is None or not dimensions:
                raise ImageIndexError(f"no OpenSearch index {name}; build one with 'dicomflow search index'")
            client.indices.create(index=name, body=index_body(model, dimensions))
        meta = (client.indices.get_mapping(index=name).get(name, {}).get("mappings", {}).get("_meta") or {})
        stored = {"name": str(meta.get("model_name")), "version": str(meta.get("model_version"))}
        if model is not None and {"name": str(model["name"]), "version": str(model["version"])} != stored:
            raise ImageIndexError(f"the OpenSearch index {name} holds vectors of {stored['name']} {stored['version']}, "
                                  f"not {model['name']} {model['version']}; re-embed into a new index")
        return cls(client, name, stored, int(meta.get("dimensions") or dimensions or 0))

    def add(self, items: Iterable[ImageVector]) -> int:
        """Upsert by SOP Instance UID in one bulk request, refreshed before it returns."""
        actions: list[dict[str, Any]] = []
        for item in items:
            vector = checked_row(item, self.dimensions)
            actions.append({"index": {"_index": self.name, "_id": item.sop_uid}})
            actions.append({"sop_uid": item.sop_uid, "study_uid": item.study_uid, "series_uid": item.series_uid,
                            "accession": item.accession, "modality": item.modality,
                            "view_position": item.view_position, "body_part": item.body_part,
                            "labels": list(item.labels), "thumbnail": item.thumbnail,
                            "vector": [float(v) for v in vector]})
        if not actions:
            return 0
        answer = self.client.bulk(body=actions, refresh="wait_for")
        failed = [i for i in answer.get("items", []) if (i.get("index") or {}).get("error")]
        if failed:
            error = failed[0]["index"]["error"]
            raise ImageIndexError(f"OpenSearch refused {len(failed)} of {len(actions) // 2} images; first: "
                                  f"{error.get('type')}: {str(error.get('reason'))[:200]}")
        return len(actions) // 2

    def remove(self, sop_uids: Iterable[str]) -> int:
        """Delete by SOP Instance UID; returns how many there were."""
        actions = [{"delete": {"_index": self.name, "_id": uid}} for uid in sop_uids]
        if not actions:
            return 0
        answer = self.client.bulk(body=actions, refresh="wait_for")
        return sum(1 for i in answer.get("items", []) if (i.get("delete") or {}).get("result") == "deleted")

    def _source(self, sop_uid: str) -> dict[str, Any]:
        found = self.client.get(index=self.name, id=sop_uid, ignore=[404])
        if not found.get("found"):
            raise ImageIndexError(f"image {str(sop_uid)[:70]} is not in the index; add it with "
                                  "'dicomflow search index'")
        return found["_source"]

    def vector_of(self, sop_uid: str) -> np.ndarray:
        return np.asarray(self._source(sop_uid)["vector"], dtype=np.float32)

    def study_of(self, sop_uid: str) -> str | None:
        return self._source(sop_uid).get("study_uid")

    def images_of_study(self, study_uid: str) -> list[str]:
        answer = self.client.search(index=self.name, body={
            "size": MAX_K, "_source": ["sop_uid"], "query": {"term": {"study_uid": study_uid}},
            "sort": [{"sop_uid": "asc"}]})
        return [h["_source"]["sop_uid"] for h in answer["hits"]["hits"]]

    def study_images(self, study_uid: str) -> list[Neighbour]:
        """The indexed images of a study with their metadata (rank = position; score 1.0: each is itself)."""
        answer = self.client.search(index=self.name, body={
            "size": MAX_K, "_source": {"excludes": ["vector"]}, "query": {"term": {"study_uid": study_uid}},
            "sort": [{"sop_uid": "asc"}]})
        return [_neighbour(n, {**h, "_score": 1.0}) for n, h in enumerate(answer["hits"]["hits"], start=1)]

    def similar(self, vector: Sequence[float] | np.ndarray, k: int = 10, *, exclude_sops: Iterable[str] = (),
                exclude_studies: Iterable[str] = (), modality: str | None = None, label: str | None = None,
                view_position: str | None = None, body_part: str | None = None) -> list[Neighbour]:
        check_k(k)
        query = unit_vector(vector, self.dimensions, "the query vector")
        body = knn_body(query, k, exclude_sops=list(exclude_sops), exclude_studies=list(exclude_studies),
                        modality=modality, label=label, view_position=view_position, body_part=body_part)
        hits = self.client.search(index=self.name, body=body)["hits"]["hits"]
        return [_neighbour(rank, hit) for rank, hit in enumerate(hits[:k], start=1)]

    def similar_to(self, sop_uid: str, k: int = 10, *, same_study: bool = False, **filters: Any) -> list[Neighbour]:
        src = self._source(sop_uid)
        studies = () if same_study else (str(src.get("study_uid")),)
        return self.similar(src["vector"], k, exclude_sops=(sop_uid,), exclude_studies=studies, **filters)
