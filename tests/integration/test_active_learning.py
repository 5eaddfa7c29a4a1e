"""``dicomflow label next`` against the real Orthanc and the emulated S3 and Model Registry: the approved chest
model scores the unlabeled images, the next job's manifest never holds a labeled one, and its order is the
uncertainty the serving container's own probabilities give."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid

import pytest
import torch
from model_helpers import model_tarball, untrained_artifact

from dicomflow import aws
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.groundtruth import active, manifest
from dicomflow.groundtruth.active import Candidate
from dicomflow.inference.request import parse_request
from dicomflow.inference.service import InferenceService
from dicomflow.modeling import registry

pytestmark = pytest.mark.integration
ATTR = "chest-findings"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomflow.cli", *args], env=dict(os.environ), capture_output=True,
                          text=True, timeout=300)


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pool(local_cloud, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Eight chest images of their own patients in the PACS, two labeled by an earlier job, and the approved
    version of a chest model group."""
    tag = uuid.uuid4().hex[:8].upper()
    images = [im.dataset for im in synthetic.chest_radiographs(8, seed=11, size=96)]
    for n, ds in enumerate(images):
        ds.PatientID = f"AL{tag}{n}"
    dicomweb.store(dicomweb.connect(local_cloud.pacs), images)
    bucket = f"active-{tag.lower()}"
    aws.client("s3").create_bucket(Bucket=bucket)
    cands = [Candidate(ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in images]
    earlier = [manifest.output_line(manifest.input_line(cands[0].orthanc_id), ATTR, {"labels": ["Edema"]}, "round-1"),
               manifest.output_line(manifest.input_line(cands[5].orthanc_id), ATTR, {"labels": []}, "round-1")]
    manifest.write_jsonl_s3(f"s3://{bucket}/round-1/output.manifest", earlier)
    torch.manual_seed(7)
    model_dir = untrained_artifact(tmp_path_factory.mktemp("al-model"), "classification2d",
                                   list(synthetic.CHEST_CLASSES), [64, 64])
    aws.write(f"s3://{bucket}/model/model.tar.gz", model_tarball(model_dir))
    group = f"al-chest-{tag.lower()}"
    registry.register(group, f"s3://{bucket}/model/model.tar.gz", "dicomflow-inference:latest")
    registry.set_status(group, 1, registry.APPROVED)
    return {"tag": tag, "images": images, "cands": cands, "bucket": bucket, "group": group, "model_dir": model_dir}


def test_label_next_leaves_out_labeled_images_and_ranks_by_the_served_uncertainty(pool) -> None:
    target = f"s3://{pool['bucket']}/round-2/input.manifest"
    r = _cli("label", "next", "--model", pool["group"], "--query", f"PatientID=AL{pool['tag']}*", "--count", "4",
             "--strategy", "entropy", "--to", target, "--label-attribute", ATTR,
             "--labeled", f"s3://{pool['bucket']}/round-1/output.manifest", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert (summary["found"], summary["labeled"], summary["scored"], summary["chosen"]) == (8, 2, 6, 4)
    assert summary["model"]["version"] == "1" and not summary["failed"]
    labeled = {pool["cands"][0].sop_uid, pool["cands"][5].sop_uid}
    ranking = [row["SOPInstanceUID"] for row in summary["ranking"]]
    assert not labeled & set(ranking)
    # the same order from the serving container's own answers, one image at a time
    svc = InferenceService.from_model_dir(pool["model_dir"])
    unlabeled = [ds for ds in pool["images"] if ds.SOPInstanceUID not in labeled]
    served = [svc.run(parse_request(_bytes(ds), "application/dicom"))["findings"]["probabilities"] for ds in unlabeled]
    scores = active.uncertainty(torch.tensor([[p[c] for c in svc.labels] for p in served]).numpy(), "entropy")
    expected = active.rank([str(ds.SOPInstanceUID) for ds in unlabeled], list(scores), 4)
    assert ranking == [e.key for e in expected]
    assert [row["score"] for row in summary["ranking"]] == pytest.approx([e.score for e in expected], abs=1e-5)
    lines = manifest.read_jsonl_s3(target)
    by_sop = {c.sop_uid: c for c in pool["cands"]}
    assert [line["source"] for line in lines] == [by_sop[k].orthanc_id for k in ranking]
    assert [line["dicomflow-active-learning"]["rank"] for line in lines] == [1, 2, 3, 4]


def test_label_next_prints_a_manifest_and_explains_a_failed_choice(pool) -> None:
    query = f"PatientID=AL{pool['tag']}*"
    r = _cli("label", "next", "--model", str(pool["model_dir"]), "--query", query, "--count", "20",
             "--strategy", "mc-dropout", "--samples", "5", "--to", "-", "--include-labeled")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = manifest.loads_jsonl(r.stdout)
    assert len(lines) == 8 and len({line["source"] for line in lines}) == 8
    scores = [line["dicomflow-active-learning"]["score"] for line in lines]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    r = _cli("label", "next", "--model", str(pool["model_dir"]), "--query", query, "--count", "3", "--strategy",
             "margin", "--to", f"s3://{pool['bucket']}/round-2/margin.manifest", "--label-attribute", ATTR,
             "--labeled", f"s3://{pool['bucket']}/round-1/output.manifest")
    assert r.returncode == 0, r.stderr[-2000:]
    first = manifest.read_jsonl_s3(f"s3://{pool['bucket']}/round-2/margin.manifest")[0]
    assert "8 image(s) match, 2 already labeled" in r.stdout and "ranked by margin" in r.stdout
    assert f"1. {first['dicomflow-active-learning']['SOPInstanceUID']}  score" in r.stdout  # whole, not "…"
    r = _cli("label", "next", "--model", str(pool["model_dir"]), "--query", "PatientID=NOBODY-HERE", "--count", "2",
             "--to", "-")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "no image on the PACS matches PatientID=NOBODY-HERE" in r.stderr


def test_label_next_ranks_series_for_a_segmenter_by_its_uncertainty_over_each_series(local_cloud, pool,
                                                                                      tmp_path) -> None:
    """A segmenter's turn: series, not images, are the objects; a series an earlier job labeled is left out; the
    order is the region uncertainty of the segmenter's own softmax over each series, read from the PACS."""
    from model_helpers import as_retrieved

    from dicomflow.inference import scoring

    tag = pool["tag"]
    series = [s.datasets for s in synthetic.hippocampus_series(4, seed=21, shape=(12, 32, 32))]
    for n, datasets in enumerate(series):
        for ds in datasets:
            ds.PatientID = f"ALS{tag}{n}"
    dicomweb.store(dicomweb.connect(local_cloud.pacs), [ds for datasets in series for ds in datasets])
    cands = [Candidate(d[0].PatientID, d[0].StudyInstanceUID, d[0].SeriesInstanceUID) for d in series]
    earlier = f"s3://{pool['bucket']}/seg-round-1/output.manifest"
    manifest.write_jsonl_s3(earlier, [manifest.output_line(manifest.input_line(cands[1].orthanc_id), "hippocampus",
                                                           {"structures": ["anterior"]}, "seg-round-1")])
    torch.manual_seed(5)
    model_dir = untrained_artifact(tmp_path, "segmentation3d", ["anterior", "posterior"], [16, 32, 32])
    r = _cli("label", "next", "--model", str(model_dir), "--query", f"PatientID=ALS{tag}*", "--count", "2",
             "--strategy", "entropy", "--to", f"s3://{pool['bucket']}/seg-round-2/input.manifest",
             "--label-attribute", "hippocampus", "--labeled", earlier, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert (summary["per"], summary["found"], summary["labeled"], summary["scored"]) == ("series", 4, 1, 3), summary
    svc = InferenceService.from_model_dir(model_dir)
    left = [d for d, c in zip(series, cands, strict=True) if c is not cands[1]]
    scores = [scoring.region_uncertainty(scoring.series_probabilities(svc, as_retrieved(d)))["entropy"] for d in left]
    expected = active.rank([str(d[0].SeriesInstanceUID) for d in left], scores, 2)
    assert [row["SeriesInstanceUID"] for row in summary["ranking"]] == [e.key for e in expected]
    assert [row["score"] for row in summary["ranking"]] == pytest.approx([e.score for e in expected], abs=1e-6)
    lines = manifest.read_jsonl_s3(f"s3://{pool['bucket']}/seg-round-2/input.manifest")
    by_series = {c.series_uid: c for c in cands}
    assert [line["source"] for line in lines] == [by_series[e.key].orthanc_id for e in expected]  # series sources
    r = _cli("label", "next", "--model", str(model_dir), "--query", f"PatientID=ALS{tag}*", "--count", "1",
             "--strategy", "mc-dropout", "--to", "-")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "series for a segmenter" in r.stderr, r.stderr
