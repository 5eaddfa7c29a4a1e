"""The OpenSearch k-NN image index by contract: the exact requests opensearch-py sends, and the reading of
OpenSearch's answers. No OpenSearch server runs here (its k-NN plugin needs the real service); the real
client library runs, with its transport's last step, the HTTP connection, replaced by one that records
each request and answers from a script (as botocore's Stubber does for Comprehend Medical)."""

from __future__ import annotations

import numpy as np
import pytest
from opensearch_script import Scripted

from dicomflow.search.opensearch import OpenSearchVectorIndex, connect, index_body, knn_body
from dicomflow.search.vectors import ImageIndexError, ImageVector

MODEL = {"name": "chest", "version": "3"}
UID = "1.2.826.0.1.3680043.8.498.{}"
INDEX = "dicomflow-images"


def _mapping(model=MODEL, dims=4) -> dict:
    return {INDEX: {"mappings": {"_meta": {"model_name": model["name"], "model_version": model["version"],
                                           "dimensions": dims}}}}


def _opened(client, dims=4) -> OpenSearchVectorIndex:
    Scripted.script += [("HEAD", f"/{INDEX}", 404, {}), ("PUT", f"/{INDEX}", 200, {"acknowledged": True}),
                        ("GET", f"/{INDEX}/_mapping", 200, _mapping(dims=dims))]
    return OpenSearchVectorIndex.open(client, INDEX, model=MODEL, dimensions=dims)


def test_a_new_index_is_created_with_the_knn_mapping_and_the_model(client) -> None:
    ix = _opened(client)
    create = Scripted.sent[1]
    assert create["body"] == index_body(MODEL, 4)
    vector = create["body"]["mappings"]["properties"]["vector"]
    assert vector == {"type": "knn_vector", "dimension": 4, "method": {
        "name": "hnsw", "engine": "lucene", "space_type": "cosinesimil",
        "parameters": {"m": 16, "ef_construction": 128}}}
    assert create["body"]["settings"] == {"index": {"knn": True}}
    assert ix.model == MODEL and ix.dimensions == 4


def test_another_models_index_is_refused(client) -> None:
    Scripted.script += [("HEAD", f"/{INDEX}", 200, {}),
                        ("GET", f"/{INDEX}/_mapping", 200, _mapping({"name": "chest", "version": "2"}))]
    with pytest.raises(ImageIndexError, match="holds vectors of chest 2, not chest 3; re-embed"):
        OpenSearchVectorIndex.open(client, INDEX, model=MODEL, dimensions=4)


def test_upsert_is_one_bulk_index_by_sop_uid_with_unit_vectors(client) -> None:
    ix = _opened(client)
    Scripted.script.append(("POST", "/_bulk", 200, {"errors": False, "items": [{"index": {"result": "created"}}] * 2}))
    n = ix.add([ImageVector(UID.format(1), UID.format(10), [3.0, 0, 4.0, 0], modality="DX", labels=("Edema",)),
                ImageVector(UID.format(2), UID.format(10), [0, 1.0, 0, 0])])
    bulk = Scripted.sent[-1]
    assert n == 2 and bulk["params"] == {"refresh": "wait_for"}
    assert bulk["body"][0] == {"index": {"_index": INDEX, "_id": UID.format(1)}}
    assert bulk["body"][1] == {"sop_uid": UID.format(1), "study_uid": UID.format(10), "series_uid": None,
                               "accession": None, "modality": "DX", "view_position": None, "body_part": None,
                               "labels": ["Edema"], "thumbnail": None,
                               "vector": pytest.approx([0.6, 0.0, 0.8, 0.0])}
    assert bulk["body"][2] == {"index": {"_index": INDEX, "_id": UID.format(2)}}


def test_a_refused_document_is_an_error_that_names_the_reason(client) -> None:
    ix = _opened(client)
    Scripted.script.append(("POST", "/_bulk", 200, {"errors": True, "items": [
        {"index": {"error": {"type": "mapper_parsing_exception", "reason": "wrong dimension"}}}]}))
    with pytest.raises(ImageIndexError, match="refused 1 of 1 images; first: mapper_parsing_exception: wrong"):
        ix.add([ImageVector(UID.format(1), UID.format(10), [1.0, 0, 0, 0])])


def test_the_knn_query_carries_every_filter_inside_it_and_scores_become_cosines(client) -> None:
    ix = _opened(client)
    Scripted.script += [
        ("GET", f"/{INDEX}/_doc/{UID.format(1)}", 200, {"found": True, "_source": {
            "sop_uid": UID.format(1), "study_uid": UID.format(10), "vector": [1.0, 0.0, 0.0, 0.0]}}),
        ("POST", f"/{INDEX}/_search", 200, {"hits": {"hits": [
            {"_id": UID.format(5), "_score": 0.95, "_source": {"sop_uid": UID.format(5), "study_uid": UID.format(11),
                                                                "modality": "DX", "labels": ["Edema"]}},
            {"_id": UID.format(6), "_score": 0.5, "_source": {"sop_uid": UID.format(6), "study_uid": UID.format(12),
                                                               "modality": "DX", "labels": ["Edema"]}}]}}),
    ]
    found = ix.similar_to(UID.format(1), 2, modality="DX", label="Edema", view_position="PA")
    search = Scripted.sent[-1]["body"]
    assert search == {"size": 2, "_source": {"excludes": ["vector"]}, "query": {"knn": {"vector": {
        "vector": [1.0, 0.0, 0.0, 0.0], "k": 2, "filter": {"bool": {
            "filter": [{"term": {"modality": "DX"}}, {"term": {"view_position": "PA"}},
                       {"term": {"labels": "Edema"}}],
            "must_not": [{"terms": {"sop_uid": [UID.format(1)]}}, {"terms": {"study_uid": [UID.format(10)]}}]}}}}}}
    assert [(n.rank, n.sop_uid) for n in found] == [(1, UID.format(5)), (2, UID.format(6))]
    assert found[0].score == pytest.approx(0.9) and found[1].score == pytest.approx(0.0)  # 2 * score - 1
    assert found[0].labels == ("Edema",)


def test_a_studys_images_come_with_their_metadata_and_never_a_vector(client) -> None:
    ix = _opened(client)
    Scripted.script.append(("POST", f"/{INDEX}/_search", 200, {"hits": {"hits": [
        {"_id": UID.format(5), "_score": None, "_source": {"sop_uid": UID.format(5), "study_uid": UID.format(11),
                                                           "modality": "DX", "labels": ["Edema"],
                                                           "thumbnail": "s3://b/search/thumbnails/a.png"}}]}}))
    found = ix.study_images(UID.format(11))
    assert Scripted.sent[-1]["body"] == {"size": 1000, "_source": {"excludes": ["vector"]},
                                         "query": {"term": {"study_uid": UID.format(11)}}, "sort": [{"sop_uid": "asc"}]}
    assert [(n.rank, n.sop_uid, n.modality, n.labels, n.thumbnail) for n in found] == [
        (1, UID.format(5), "DX", ("Edema",), "s3://b/search/thumbnails/a.png")]


def test_without_filters_the_query_is_a_bare_knn_and_delete_counts_what_went(client) -> None:
    assert knn_body(np.array([0.0, 1.0]), 3) == {"size": 3, "_source": {"excludes": ["vector"]},
                                                "query": {"knn": {"vector": {"vector": [0.0, 1.0], "k": 3}}}}
    ix = _opened(client)
    Scripted.script.append(("POST", "/_bulk", 200, {"items": [{"delete": {"result": "deleted"}},
                                                             {"delete": {"result": "not_found"}}]}))
    assert ix.remove([UID.format(1), UID.format(2)]) == 1
    assert Scripted.sent[-1]["body"] == [{"delete": {"_index": INDEX, "_id": UID.format(1)}},
                                         {"delete": {"_index": INDEX, "_id": UID.format(2)}}]


def test_bad_input_is_refused_before_anything_is_sent(client) -> None:
    ix = _opened(client)
    sent = len(Scripted.sent)
    with pytest.raises(ImageIndexError, match="has 3 values; this index holds 4-d vectors"):
        ix.similar([1.0, 2.0, 3.0])
    with pytest.raises(ImageIndexError, match="is not a DICOM UID"):
        ix.add([ImageVector("x", UID.format(1), [1.0, 0, 0, 0])])
    with pytest.raises(ImageIndexError, match="k must be a whole number"):
        ix.similar([1.0, 0, 0, 0], k=5000)
    assert len(Scripted.sent) == sent
    Scripted.script.append(("GET", f"/{INDEX}/_doc/{UID.format(9)}", 404, {"found": False}))
    with pytest.raises(ImageIndexError, match="is not in the index"):
        ix.similar_to(UID.format(9))


def test_the_client_is_https_with_certificate_checks_and_sigv4(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    with pytest.raises(ImageIndexError, match="must be https://"):
        connect("http://search.example")
    c = connect("https://search-domain.eu-west-1.es.amazonaws.com")
    conn = c.transport.connection_pool.connections[0]
    assert conn.use_ssl and conn.session.verify not in (False, None, "")  # True, or the CA bundle to verify with
    auth = conn.session.auth
    assert type(auth).__name__ == "AWSV4SignerAuth" and auth.service == "es" and auth.signer.region == "eu-west-1"


def test_configuration_selects_the_backend(client, monkeypatch, tmp_path) -> None:
    from dicomflow.search import images, opensearch
    from dicomflow.search.vectors import VectorIndex

    monkeypatch.delenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", raising=False)
    with images.open_image_index(tmp_path / "ix", model=MODEL, dimensions=4) as embedded:
        assert isinstance(embedded, VectorIndex)
    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", "https://search.example")
    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_INDEX", INDEX)
    monkeypatch.setattr(opensearch, "connect", lambda url, region=None: client)
    Scripted.script += [("HEAD", f"/{INDEX}", 200, {}), ("GET", f"/{INDEX}/_mapping", 200, _mapping())]
    remote = images.open_image_index(tmp_path / "unused")
    assert isinstance(remote, OpenSearchVectorIndex) and remote.model == MODEL and remote.name == INDEX
    with pytest.raises(ImageIndexError, match="--rebuild is for the embedded index"):
        images.index_studies("chest", {}, tmp_path / "ix", rebuild=True)


def _record(sop: str, vector: list[float]) -> dict:
    return {"model": MODEL, "sopInstanceUID": sop, "studyInstanceUID": UID.format(100),
            "seriesInstanceUID": UID.format(101), "accessionNumber": "A-1", "modality": "DX", "viewPosition": "PA",
            "bodyPart": "CHEST", "labels": ["Edema"], "thumbnail": "s3://b/search/thumbnails/x.png", "vector": vector}


def test_ingestion_writes_each_embedding_into_the_configured_index(client, monkeypatch, tmp_path) -> None:
    """The ingestion Lambda's write (:func:`dicomflow.search.ingest.index_record`): with a domain configured,
    one bulk index of the SOP UID with the unit vector and the filter fields; else the embedded index of
    DICOMFLOW_SEARCH_INDEX_DIR; with neither, nothing."""
    from dataclasses import replace

    from dicomflow.config import runtime
    from dicomflow.search import ingest, opensearch
    from dicomflow.search.vectors import VectorIndex

    monkeypatch.delenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", raising=False)
    monkeypatch.delenv("DICOMFLOW_SEARCH_INDEX_DIR", raising=False)
    assert ingest.index_record(runtime(), _record(UID.format(1), [3.0, 4.0, 0.0, 0.0])) is False
    local = replace(runtime(), search_index_dir=str(tmp_path / "ix"))
    assert ingest.index_record(local, _record(UID.format(1), [3.0, 4.0, 0.0, 0.0])) is True
    with VectorIndex.open(tmp_path / "ix") as ix:
        assert ix.model == MODEL and np.allclose(ix.vector_of(UID.format(1)), [0.6, 0.8, 0, 0])
    with pytest.raises(ImageIndexError, match="holds vectors of chest 3"):
        other = {**_record(UID.format(2), [1.0, 0, 0, 0]), "model": {"name": "chest", "version": "4"}}
        ingest.index_record(local, other)

    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", "https://search.example")
    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_INDEX", INDEX)
    monkeypatch.setattr(opensearch, "connect", lambda url, region=None: client)
    Scripted.script += [("HEAD", f"/{INDEX}", 200, {}), ("GET", f"/{INDEX}/_mapping", 200, _mapping()),
                        ("POST", "/_bulk", 200, {"errors": False, "items": [{"index": {"result": "created"}}]})]
    assert ingest.index_record(runtime(), _record(UID.format(3), [0.0, 0.0, 2.0, 0.0])) is True
    action, doc = Scripted.sent[-1]["body"]
    assert action == {"index": {"_index": INDEX, "_id": UID.format(3)}}
    assert doc["vector"] == [0.0, 0.0, 1.0, 0.0] and (doc["modality"], doc["labels"]) == ("DX", ["Edema"])


def test_an_unreachable_domain_fails_the_one_object_with_a_reason(client, monkeypatch) -> None:
    from dicomflow.config import runtime
    from dicomflow.search import ingest, opensearch

    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_URL", "https://search.example")
    monkeypatch.setenv("DICOMFLOW_SEARCH_OPENSEARCH_INDEX", INDEX)
    monkeypatch.setattr(opensearch, "connect", lambda url, region=None: client)
    Scripted.script.append(("HEAD", f"/{INDEX}", 500, {"error": "cluster unavailable"}))
    with pytest.raises(ImageIndexError, match="the image index could not be written"):
        ingest.index_record(runtime(), _record(UID.format(4), [1.0, 0.0, 0.0, 0.0]))
