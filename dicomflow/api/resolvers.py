"""The search API's resolvers: plain functions over the search engine (:mod:`dicomflow.search`), the same
locally (ariadne) and behind AppSync's Lambda resolvers.

Each takes the request's :class:`Context` (the signed-in user, the open indexes, how to sign a thumbnail
link) and the GraphQL arguments, and returns plain dicts shaped like ``schema.graphql``. Input errors are
the engine's own messages; words of a report, accession numbers and study dates are returned only to users
who may read reports (:class:`dicomflow.api.auth.Forbidden` otherwise, for fields that carry nothing else);
the others see codes, counts, UIDs and images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dicomflow.api.auth import Forbidden, User
from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError
from dicomflow.search.report_index import MAX_PAGE  # the most reports, codes or neighbours one query asks for


class BadQuery(DicomflowError):
    """Arguments the API refuses; the message says what to send instead."""


@dataclass
class Context:
    user: User
    reports: Any | None  # a report index (embedded or OpenSearch): search, facets, report; None: none built yet
    images: Any | None  # an image index, None when none has been built
    sign: Callable[[str], str | None]  # s3:// thumbnail -> short-lived https link (None: not to be shown)
    #: (username, StudyInstanceUID) -> a one-time viewer sign-in link; None where there is no viewer
    viewer: Callable[[str, str], str | None] = lambda _user, _study: None


def _status(value: str | None) -> str | None:
    return value.lower() if value else None


def _first(value: object, name: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise BadQuery(f"{name} must be an integer from 1 to {MAX_PAGE}")
    return value


def _reports(ctx: Context) -> Any:
    if ctx.reports is None:
        raise BadQuery("no report index has been built yet ('dicomflow search add-reports')")
    return ctx.reports


def _identifiers(ctx: Context, accession: str | None, study_date: str | None) -> dict[str, str | None]:
    """A study's accession number and date: for users who may read reports, else None."""
    if not ctx.user.can_read_reports:
        return {"accessionNumber": None, "studyDate": None}
    return {"accessionNumber": accession, "studyDate": study_date}


def _mention(m: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    return {"finding": m.get("finding"), "code": m.get("code"), "description": m.get("description"),
            "status": str(m.get("status") or "").upper(), "begin": int(m["begin"]), "end": int(m["end"]),
            "text": m.get("text") if ctx.user.can_read_reports else None}


def reports(ctx: Context, text: str | None = None, codes: list[str] | None = None, status: str | None = None,
            since: str | None = None, until: str | None = None, first: int = 20,
            after: str | None = None) -> dict[str, Any]:
    if text and not ctx.user.can_read_reports:
        raise Forbidden("searching report text needs the radiologist group; search by codes instead")
    page = _reports(ctx).search(text, codes=codes or (), status=_status(status), limit=_first(first, "first"),
                                cursor=after, since=since, until=until)
    return {"total": page.total, "nextCursor": page.next_cursor,
            "reports": [{"studyInstanceUID": h.study_uid, **_identifiers(ctx, h.accession, h.study_date),
                         "score": h.score,
                         "snippet": h.snippet if ctx.user.can_read_reports else None,
                         "mentions": [_mention(m, ctx) for m in h.mentions]} for h in page.hits]}


def facets(ctx: Context, text: str | None = None, codes: list[str] | None = None, status: str | None = "POSITIVE",
           since: str | None = None, until: str | None = None, first: int = 30) -> list[dict[str, Any]]:
    if text and not ctx.user.can_read_reports:
        raise Forbidden("counting codes by report text needs the radiologist group; filter by codes instead")
    return _reports(ctx).facets(text, codes=codes or (), status=_status(status), limit=_first(first, "first"),
                                since=since, until=until)


def _image(n: Any, ctx: Context) -> dict[str, Any]:
    return {"sopInstanceUID": n.sop_uid, "studyInstanceUID": n.study_uid, "seriesInstanceUID": n.series_uid,
            "modality": n.modality, "viewPosition": n.view_position, "bodyPart": n.body_part,
            "labels": list(n.labels), "thumbnailUrl": ctx.sign(n.thumbnail) if n.thumbnail else None}


def similar_images(ctx: Context, image: str | None = None, study: str | None = None, k: int = 10,
                   filter: Mapping[str, Any] | None = None, sameStudy: bool = False) -> dict[str, Any]:  # noqa: A002,N803 - the schema's names
    if ctx.images is None:
        raise BadQuery("no image index has been built yet ('dicomflow search index')")
    if (image is None) == (study is None):
        raise BadQuery("give exactly one of image (a SOPInstanceUID) or study (a StudyInstanceUID)")
    uid = image or study
    if not is_uid(str(uid)):
        raise BadQuery(f"{str(uid)[:70]!r} is not a DICOM UID")
    if study is not None:
        images = ctx.images.images_of_study(study)
        if not images:
            raise BadQuery(f"study {study} has no image in the index")
        image = images[0]
    wanted = {key: (filter or {}).get(name) for name, key in (("modality", "modality"), ("label", "label"),
                                                             ("viewPosition", "view_position"),
                                                             ("bodyPart", "body_part"))}
    found = ctx.images.similar_to(image, _first(k, "k"), same_study=bool(sameStudy),
                                  **{key: v for key, v in wanted.items() if v})
    return {"query": image, "model": ctx.images.model,
            "neighbours": [{"rank": n.rank, "score": n.score, "image": _image(n, ctx)} for n in found]}


def study(ctx: Context, uid: str) -> dict[str, Any]:
    if not is_uid(str(uid)):
        raise BadQuery(f"{str(uid)[:70]!r} is not a DICOM UID")
    try:
        report = _reports(ctx).report(uid)
    except DicomflowError:
        report = None
    images = ctx.images.study_images(uid) if ctx.images is not None else []
    if report is None and not images:
        raise BadQuery("no report or image of that study is indexed")
    return {"studyInstanceUID": uid, **_identifiers(ctx, (report or {}).get("accessionNumber"),
                                                     (report or {}).get("studyDate")),
            "report": None if report is None else {
                "text": report["text"] if ctx.user.can_read_reports else None,
                "mentions": [_mention(m, ctx) for m in report["mentions"]]},
            "images": [_image(n, ctx) for n in images],
            "viewerUrl": ctx.viewer(ctx.user.username, uid) if ctx.user.can_read_reports else None}


def me(ctx: Context) -> dict[str, Any]:
    return {"username": ctx.user.username, "groups": list(ctx.user.groups),
            "canReadReports": ctx.user.can_read_reports}


#: Query field -> resolver (what the GraphQL server and the AppSync Lambda resolver dispatch on).
QUERIES: dict[str, Callable[..., Any]] = {"reports": reports, "facets": facets, "similarImages": similar_images,
                                          "study": study, "me": me}
