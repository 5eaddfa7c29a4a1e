"""One inference request end to end: study JSON -> QIDO/WADO-RS -> model -> findings, SR/SEG, STOW-RS.

:class:`InferenceService` holds the model (loaded once, read-only afterwards) and serves requests
from many threads at once: each request keeps its state in local variables, never on disk.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dicomweb_client import DICOMwebClient
from dicomweb_client.protocol import DICOMClient

from dicomflow import aws
from dicomflow.config import runtime
from dicomflow.credentials import PacsNotAllowed, pacs_connection
from dicomflow.dicom import dicomweb
from dicomflow.dicom.errors import PacsError
from dicomflow.dicom.geometry import GeometryError
from dicomflow.dicom.seg import build_seg
from dicomflow.dicom.uid import is_uid
from dicomflow.dicom.volume import NotAnImageError, load_image
from dicomflow.inference import findings as F
from dicomflow.inference.endpoint import DICOM, OUTPUT_S3_ENV
from dicomflow.inference.errors import (
    BadRequest,
    PacsRefused,
    PacsUnavailable,
    UnusableSeries,
    from_pacs_error,
)
from dicomflow.inference.request import StudyRequest
from dicomflow.inference.sections import slice_outlines
from dicomflow.inference.selection import Selection, check_retrieved, choose_series
from dicomflow.inference.sr import build_sr
from dicomflow.inference.timing import StageTimer, iso_utc
from dicomflow.modeling.artifact import LoadedModel, load_artifact
from dicomflow.modeling.embedding import EMBEDDING_TASKS, embed_and_classify, weights_version
from dicomflow.modeling.networks import use_onednn_conv3d
from dicomflow.modeling.reference import input_profile, quality

log = logging.getLogger(__name__)



#: Worker threads for PACS calls that overlap a request's own work (the SEG's STOW while the SR is built).
_PACS_WORKERS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dicomflow-pacs")


def _in_background(client: DICOMClient, fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` in a worker thread for an HTTP client; at once for others (a ``DICOMfileClient``'s
    database connection belongs to its thread). Either way the outcome is in the returned future."""
    if isinstance(client, DICOMwebClient):
        return _PACS_WORKERS.submit(fn, *args)
    done: Future = Future()
    try:
        done.set_result(fn(*args))
    except Exception as exc:  # handed to whoever reads the future
        done.set_exception(exc)
    return done


@contextmanager
def _pacs(what: str) -> Iterator[None]:
    try:
        yield
    except PacsError as exc:
        raise from_pacs_error(exc, what) from exc


def _retrying(deadline: float, what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with PACS failures mapped; while the PACS is unavailable, again with backoff until ``deadline``.

    Only :class:`PacsUnavailable` (connection refused or dropped, 502/503/504 after the session's own
    quick retries) is retried: a restarting PACS comes back within seconds. Every call here is
    idempotent (searches, retrievals, and STOW of the same instance).
    """
    pause = 0.25
    while True:
        try:
            with _pacs(what):
                return fn(*args)
        except PacsUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            log.info("PACS unavailable while %s; retrying in %.2f s", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class InferenceService:
    """A loaded model plus the request pipeline around it."""

    def __init__(self, model: LoadedModel, name: str | None = None) -> None:
        self.model = model
        self.task = model.task
        self.labels = list(model.labels)
        self.transform = model.transform
        self.network = use_onednn_conv3d(model.network)  # in place: 3D convolutions on oneDNN
        self.activation = model.metadata.get("activation", "sigmoid")
        registered = runtime()
        self.name = name or registered.model_name or str(model.metadata.get("name") or f"dicomflow-{model.task}")
        # None: not deployed from the Model Registry (a model of a multi-model endpoint is named by its artifact)
        self.version = registered.model_version if name is None else None
        self.package_arn = registered.model_package_arn
        mods = model.metadata.get("modalities")
        self.modalities = tuple(mods) if mods else None
        self.structures = model.structures
        self._embedding_version: str | None = None

    @property
    def embedding_model(self) -> dict[str, str]:
        """The name and version every embedding carries: the registry version, else the weights' fingerprint."""
        if self._embedding_version is None:
            self._embedding_version = str(self.version) if self.version else weights_version(self.network)
        return {"name": self.name, "version": self._embedding_version}

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, name: str | None = None) -> InferenceService:
        """Load the artifact in ``model_dir`` (an extracted ``model.tar.gz``, or a dir holding one); ``name``
        is what results call the model (default: the registered name, else the artifact's)."""
        path = Path(model_dir)
        tarball = path / "model.tar.gz"
        if path.is_dir() and not (path / "dicomflow_model.json").exists() and tarball.exists():
            path = tarball
        return cls(load_artifact(path), name)

    def model_input(self, array: np.ndarray, geometry: Any) -> tuple[np.ndarray, torch.Tensor]:
        """A series' (or image's) pixels as this model sees them: a classifier's middle frame of a volume, and the
        artifact's preprocessing as a batch of one. Returns (the pixels used, the input tensor)."""
        if self.task == "classification2d" and array.ndim == 3:
            array = array[array.shape[0] // 2]
        return array, self.transform(array, geometry.spacing[-array.ndim:]).unsqueeze(0)

    # ---- checks that need no PACS ---------------------------------------------------------------
    def _check_outputs(self, request: StudyRequest) -> str | None:
        """Reject outputs this model cannot make; the S3 prefix for the occlusion PNG (if asked)."""
        if request.image is not None and self.task != "classification2d":
            raise BadRequest(f"a DICOM image body ({DICOM}) is for a 2D classifier; this endpoint serves "
                             f"{self.task}: send a study JSON instead")
        for name in ("seg", "contours"):
            if name in request.outputs and self.task != "segmentation3d":
                raise BadRequest(f"output '{name}' needs a segmentation model; this endpoint serves {self.task}")
        if "embedding" in request.outputs and (self.task not in EMBEDDING_TASKS or self.transform.spacing is not None):
            raise BadRequest(f"output 'embedding' needs a whole-image classifier ({', '.join(EMBEDDING_TASKS)}); "
                             f"this endpoint serves {self.task}")
        if "occlusion" not in request.outputs:
            return None
        if self.task == "segmentation3d":
            raise BadRequest("output 'occlusion' is for classifiers; this endpoint serves segmentation3d")
        prefix = request.output_s3_uri or runtime().output_s3_uri
        if not prefix:
            raise BadRequest(f"output 'occlusion' needs 'outputS3Uri' in the request (or {OUTPUT_S3_ENV} on the "
                             "endpoint) to say where the PNG goes")
        return prefix

    # ---- the pipeline ---------------------------------------------------------------------------------
    def run(self, request: StudyRequest, client: DICOMClient | None = None) -> dict[str, Any]:
        """Serve one request; raises :class:`dicomflow.inference.errors.InferenceError` subclasses.

        ``client`` (any DICOMClient, e.g. a file-backed one in tests) replaces the PACS connection
        resolved from the request.
        """
        timer = StageTimer()
        occlusion_prefix = self._check_outputs(request)
        deadline = time.monotonic() + runtime().pacs_retry_seconds
        if request.image is not None:
            selection, datasets = self._sent_image(request.image)
        else:
            if client is None:
                try:
                    conn = pacs_connection(request.dicomweb_url, request.secret_arn)
                except PacsNotAllowed as exc:
                    raise PacsRefused(str(exc)) from None
                client = dicomweb.connect(conn, retries=2, backoff_factor=0.2)

            with timer.stage("query"):
                selection = _retrying(deadline, f"searching study {request.study_uid}", choose_series, client,
                                      request.study_uid, request.series_uid, self.task, self.modalities)

            with timer.stage("retrieve"):
                datasets = _retrying(deadline, f"retrieving series {selection.series_uid}", dicomweb.retrieve_series,
                                     client, request.study_uid, selection.series_uid)

        with timer.stage("preprocess"):
            check_retrieved(datasets, selection.series_uid, self.task, self.modalities)
            if "contours" in request.outputs and len(datasets) < 2:
                raise BadRequest("output 'contours' gives outlines per SOP instance (single-frame slices); "
                                 f"series {selection.series_uid} is one multi-frame object")
            if self.task == "classification2d":
                datasets = datasets[:1]
            try:
                array, geometry = load_image(datasets)
            except (GeometryError, NotAnImageError) as exc:
                raise UnusableSeries(f"series {selection.series_uid}: {exc}") from None
            if len(datasets) > 1 and not geometry.has_patient_geometry:
                selection.reason += ("; slices ordered by InstanceNumber and spaced by the header's "
                                     "SpacingBetweenSlices/SliceThickness: no slice has ImagePositionPatient")
            array, x = self.model_input(array, geometry)

        embedding = None
        with timer.stage("model"), torch.inference_mode():
            if "embedding" in request.outputs:
                out, embedding = embed_and_classify(self.network, x)
            else:
                out = self.transform.run_network(self.network, x)

        label = None
        if self.task == "segmentation3d":
            with timer.stage("postprocess"):
                label = self.transform.label_map(out[0], tuple(array.shape))
                result = F.segmentation_volumes(label, geometry.spacing, self.labels)
                meta = self.model.metadata
                result["quality"] = quality(meta.get("reference"), meta.get("expected"),
                                            input_profile(array, geometry.spacing), result["volumesMm3"])
        else:
            probs = F.probabilities(out[0].detach().cpu().numpy(), self.activation)
            result = F.classification_findings(probs, self.labels)
            meta = self.model.metadata
            result["quality"] = quality(meta.get("reference"), meta.get("expected"),
                                        input_profile(array, geometry.spacing[-array.ndim:]), None)

        by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
        ordered = [by_uid[u] for u in geometry.sop_instance_uids if u in by_uid] or list(datasets)
        occlusion = None
        if occlusion_prefix:  # before the results are encoded: the PDF report shows the map
            with timer.stage("occlusion"):
                occlusion = self._occlusion(x, result, occlusion_prefix, request)
        stored = self._encode_and_store(request, timer, client, ordered, result, label, deadline, selection.as_dict(),
                                        occlusion)

        response: dict[str, Any] = {
            "studyInstanceUID": request.study_uid,
            "startedAt": iso_utc(timer.started_at),
            "task": self.task,
            "model": {"name": self.name, "version": self.version, "packageArn": self.package_arn,
                      "labels": self.labels, "created": self.model.metadata.get("created")},
            "series": selection.as_dict(),
            "volume": {"shape": list(array.shape), "spacingMm": [round(float(s), 6) for s in geometry.spacing]},
            "findings": result,
            "outputs": stored,
        }
        if embedding is not None:
            response["embedding"] = {
                "model": self.embedding_model, "dimensions": int(embedding.shape[1]),
                "seriesInstanceUID": selection.series_uid,
                "sopInstanceUID": str(datasets[0].SOPInstanceUID) if self.task == "classification2d" else None,
                "viewPosition": str(datasets[0].get("ViewPosition", "")) or None,
                "bodyPart": str(datasets[0].get("BodyPartExamined", "")) or None,
                "thumbnail": self._thumbnail(datasets[0], request) if self.task == "classification2d" else None,
                "vector": embedding[0].tolist(),  # Python floats without a tensor per element
            }
        if occlusion is not None:
            response["occlusion"] = {k: v for k, v in occlusion.items() if k != "png"}
        if "contours" in request.outputs and label is not None:  # every structure's outlines, slice by slice
            response["contours"] = slice_outlines(label, [(st.value, st.name) for st in self.structures],
                                                  [str(ds.SOPInstanceUID) for ds in ordered])
        response["timingMs"] = timer.as_dict()
        return response

    def _sent_image(self, ds: Any) -> tuple[Selection, list]:
        """The selection and dataset of an image sent as the body (a 2D classifier only)."""
        series = str(ds.get("SeriesInstanceUID", ""))
        if not is_uid(series):
            raise BadRequest("the DICOM image has no valid SeriesInstanceUID")
        return Selection(series_uid=series, modality=str(ds.get("Modality", "")), instance_count=1,
                         reason="the image sent in the request body"), [ds]

    def _encode_and_store(self, request: StudyRequest, timer: StageTimer, client: DICOMClient,
                          sources: list, result: dict, label: np.ndarray | None,
                          deadline: float, selection: dict, occlusion: dict | None = None) -> dict[str, dict]:
        """Build the SEG, SR and clinician's PDF report asked for, STOW them, and say what was made; each is sent
        while the next is built.

        The SR references the SEG, so the SEG comes first. Stages are wall-clock segments of the
        request: ``encode`` covers building both (and the SEG's upload running beside the SR's
        build), ``stow`` the wait for the uploads after that.
        """
        store = request.store_to_pacs
        made: dict[str, Any] = {}
        uploads: list[Future] = []

        def upload(ds: Any) -> Future:
            return _in_background(client, _retrying, deadline, "storing the results", dicomweb.store, client, [ds])

        try:
            with timer.stage("encode"):
                seg = None
                if "seg" in request.outputs:
                    seg = made["seg"] = build_seg(sources, label, self.structures, self.name,
                                                        model_version=self.version)
                    if store:
                        uploads.append(upload(seg))
                if "sr" in request.outputs:
                    made["sr"] = build_sr(sources, result, self.task, self.name, model_version=self.version, seg=seg,
                                          structures=self.structures, label=label)
                    if store:
                        uploads.append(upload(made["sr"]))
                if "pdf" in request.outputs:
                    made["pdf"] = self._report(sources, result, label, selection, occlusion)
                    if store:
                        uploads.append(upload(made["pdf"]))
        finally:
            with timer.stage("stow"):
                for pending in uploads:
                    pending.result()
        return {kind: {"SOPInstanceUID": str(ds.SOPInstanceUID), "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                       "SOPClassUID": str(ds.SOPClassUID), "storedToPacs": bool(store)}
                for kind, ds in made.items()}

    def _report(self, sources: list, result: dict, label: np.ndarray | None, selection: dict,
                occlusion: dict | None) -> Any:
        """The clinician's one-page report as an Encapsulated PDF in the study (normative ranges, when the model
        artifact's metadata has ``normativeRangesMm3``: structure -> [low, high]; the occlusion map when made)."""
        from dicomflow.dicom.pdf import encapsulated_pdf
        from dicomflow.inference.report import clinician_report

        extra = []
        if occlusion is not None:
            from PIL import Image

            heat = np.asarray(Image.open(io.BytesIO(occlusion["png"])).convert("RGB"))
            extra.append((f"occlusion map, {occlusion['label']} (red: where it looked)", heat))
        pdf = clinician_report(sources, result, self.task, self.name, self.version, selection, label,
                               self.structures, self.model.metadata.get("normativeRangesMm3"), extra)
        title = "AI volumetry report" if self.task == "segmentation3d" else "AI findings report"
        return encapsulated_pdf(pdf, sources[0], title, series_description=f"{title} ({self.name})")

    def _thumbnail(self, ds: Any, request: StudyRequest) -> str | None:
        """The image's PNG thumbnail at ``<outputS3Uri>thumbnails/<sha256>.png`` (content-addressed), or None
        without an output prefix: what a search result shows of the image."""
        from dicomflow.dicom.thumbnail import thumbnail_key, thumbnail_png

        prefix = request.output_s3_uri or runtime().output_s3_uri
        if not prefix:
            return None
        png = thumbnail_png(ds)
        uri = thumbnail_key(png, prefix=prefix.rstrip("/") + "/thumbnails/")
        try:
            aws.parse_s3_uri(uri)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        aws.write(uri, png, "image/png")
        return uri

    def _occlusion(self, x: torch.Tensor, result: dict, prefix: str, request: StudyRequest) -> dict:
        from dicomflow.inference.occlusion import occlusion_map, render_png

        top = result["top"]
        image, sens = occlusion_map(self.network, x, top["index"], self.activation)
        png = render_png(image, sens)
        try:
            bucket, key_prefix = aws.parse_s3_uri(prefix.rstrip("/") + "/")
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        key = f"{key_prefix}occlusion/{request.study_uid}/{uuid.uuid4().hex}.png"
        aws.write(aws.s3_uri(bucket, key), png, "image/png")
        return {"label": top["label"], "s3Uri": aws.s3_uri(bucket, key), "shape": list(np.shape(image)), "png": png}
