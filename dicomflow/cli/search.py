"""``dicomflow search``: embed studies with a classification endpoint into the image index; find similar images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from dicomflow import aws
from dicomflow.cli.common import console, json_option, out, print_json, settings_from, value_table
from dicomflow.cli.deploy import studies_from, study_request
from dicomflow.dicom.uid import is_uid
from dicomflow.errors import DicomflowError
from dicomflow.infra.stack import DEFAULT_STACK
from dicomflow.paths import image_index_dir, report_index_path
from dicomflow.search import report_index as ri
from dicomflow.search.embeddings import model_of
from dicomflow.search.images import (
    IndexRun,
    fill_index,
    image_vector,
    index_studies,
    open_image_index,
    read_records,
    same_patient_studies,
)
from dicomflow.search.vectors import MAX_K, ImageIndexError


def _index_dir(ctx: click.Context, given: str | None) -> Path:
    return Path(given) if given else image_index_dir(settings_from(ctx).data_dir)


index_option = click.option("--index", "index_dir", type=click.Path(file_okay=False),
                            help="Index directory [<data dir>/search/images].")


@click.group()
def search() -> None:
    """Image and report search.

    Images: embed studies through a classification endpoint ('index'), then find similar images
    ('similar'); the index (SQLite + a usearch HNSW graph) is <data dir>/search/images, one model per
    index ('index --rebuild' re-embeds after a model change). Reports: analyse report files into the
    report index ('add-reports'), then search their text, codes and negation ('reports') and count
    ICD-10-CM codes ('facets'); the index is <data dir>/search/reports.sqlite.
    """


def _reports_path(ctx: click.Context, given: str | None) -> Path:
    return Path(given) if given else report_index_path(settings_from(ctx).data_dir)


reports_option = click.option("--reports-index", "reports_path", type=click.Path(dir_okay=False),
                              help="Report index file [<data dir>/search/reports.sqlite].")
since_option = click.option("--since", metavar="YYYY-MM-DD", help="Only studies on or after this date.")
until_option = click.option("--until", metavar="YYYY-MM-DD", help="Only studies on or before this date.")
code_option = click.option("--code", "codes", multiple=True, metavar="ICD10CM",
                           help="A code, block (J80-J84) or chapter; also matches every code below it (repeatable).")


@search.command("index")
@click.option("--endpoint", help="A classification endpoint (real-time or async) to embed the studies with.")
@click.option("--study", "study_uids", multiple=True, metavar="UID", help="A StudyInstanceUID (repeatable).")
@click.option("--studies", "study_file", type=click.File("r"), help="File of StudyInstanceUIDs, one per line.")
@click.option("--query", multiple=True, metavar="KEY=VALUE",
              help="The PACS's studies matching QIDO-RS filters, e.g. Modality=DX (repeatable).")
@click.option("--from", "records_uri", metavar="S3_PREFIX", help="Instead of an endpoint: the embedding records "
              "the ingestion Lambda wrote (the stack's SearchOutputUri + embeddings/), or an async endpoint's "
              "responses (*.out) to requests for 'embedding', e.g. a routing rule's.")
@index_option
@click.option("--rebuild", is_flag=True, help="Build a new index and replace the old one when done (after a model "
              "change: vectors of two models are never mixed).")
@click.option("--thumbnails", "thumbnails_uri", metavar="S3_URI",
              help="s3:// prefix where the endpoint writes each image's PNG thumbnail (thumbnails/<sha256>.png), "
                   "named in the results (e.g. the stack's SearchOutputUri).")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for all results.")
@json_option
@click.pass_context
def index(ctx: click.Context, endpoint: str | None, study_uids: tuple[str, ...], study_file: Any,
          query: tuple[str, ...], records_uri: str | None, index_dir: str | None, rebuild: bool,
          thumbnails_uri: str | None, timeout: float, as_json: bool) -> None:
    """Embed studies through an endpoint (output 'embedding'; nothing is stored to the PACS), or load the
    ingestion Lambda's embeddings (--from), into the image index."""
    where = _index_dir(ctx, index_dir)
    if records_uri:
        if endpoint or study_uids or study_file or query:
            raise click.UsageError("--from loads embeddings already made: give it without --endpoint and studies")
        uris = [u for u in aws.list_keys(records_uri) if u.endswith((".json", ".out"))]
        if not uris:
            raise ImageIndexError(f"no embedding record (*.json) or async response (*.out) under {records_uri}")
        with _bar(as_json) as bar:
            task = bar.add_task(f"loading embeddings from {records_uri}", total=len(uris))
            run = fill_index(read_records(uris), len(uris), where, rebuild=rebuild, progress=lambda: bar.advance(task))
    else:
        if not endpoint:
            raise click.UsageError("give --endpoint NAME (and the studies), or --from S3_PREFIX")
        run = _index_through(endpoint, study_uids, study_file, query, where, rebuild, thumbnails_uri, timeout,
                             as_json)
    _print_run(run, as_json)


def _bar(as_json: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=as_json)


def _index_through(endpoint: str, study_uids: tuple[str, ...], study_file: Any, query: tuple[str, ...],
                   where: Path, rebuild: bool, thumbnails_uri: str | None, timeout: float, as_json: bool) -> IndexRun:
    if study_uids and (study_file or query):
        raise click.UsageError("give --study UIDs, or one of --studies FILE and --query KEY=VALUE")
    studies = list(dict.fromkeys(study_uids)) if study_uids else studies_from(study_file, query, None)
    bodies = {uid: study_request(uid, None, "embedding", False, None, None, thumbnails_uri) for uid in studies}
    with _bar(as_json) as bar:
        task = bar.add_task(f"embedding through {endpoint}", total=len(bodies))
        return index_studies(endpoint, bodies, where, rebuild=rebuild, timeout_s=timeout,
                             progress=lambda: bar.advance(task))


def _print_run(run: IndexRun, as_json: bool) -> None:
    if as_json:
        print_json(run.as_dict())
        return
    out.print(f"indexed {run.indexed} of {run.studies} with {run.model['name']} {run.model['version']}; "
              f"{run.images} images in {run.index}", soft_wrap=True)
    for row in run.failed:
        out.print(Text(f"  failed {row['study']}: {row['error']}"), soft_wrap=True)


@search.command("ingest")
@click.option("--from", "source", required=True, metavar="pacs|S3_PREFIX",
              help="'pacs' (the studies of --query/--study, embedded through --endpoint) or an s3:// prefix "
                   "of DICOM objects and report files (*.json) to ingest as the ingestion Lambda does.")
@click.option("--endpoint", help="The classification endpoint to embed with [s3: the stack's "
              "SearchEmbeddingEndpoint; none: metadata, thumbnails and reports only].")
@click.option("--study", "study_uids", multiple=True, metavar="UID", help="pacs: a StudyInstanceUID (repeatable).")
@click.option("--query", multiple=True, metavar="KEY=VALUE", help="pacs: QIDO-RS filters, e.g. Modality=DX.")
@click.option("--stack", "stack_name", default=DEFAULT_STACK, show_default=True,
              help="The stack whose search table and output prefix receive what is ingested.")
@index_option
@reports_option
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for each embedding.")
@json_option
@click.pass_context
def ingest(ctx: click.Context, source: str, endpoint: str | None, study_uids: tuple[str, ...],
           query: tuple[str, ...], stack_name: str, index_dir: str | None, reports_path: str | None,
           timeout: float, as_json: bool) -> None:
    """Backfill search: every image and report of a source into the search table, thumbnails, the image
    index and the report index, with a progress bar; an object that fails is listed, never fatal."""
    from dicomflow.infra import stack

    outputs = stack.outputs(stack_name)
    where = _index_dir(ctx, index_dir)
    if source == "pacs":
        if not endpoint:
            raise click.UsageError("--from pacs needs --endpoint NAME (a classification endpoint) to embed with")
        if not (study_uids or query):
            raise click.UsageError("--from pacs needs --study UID or --query KEY=VALUE")
        run = _index_through(endpoint, study_uids, None, query, where, False, outputs.get("SearchOutputUri"),
                             timeout, as_json)
        _print_run(run, as_json)
        return
    if not source.startswith("s3://"):
        raise click.BadParameter(f"{source!r} is neither 'pacs' nor an s3:// prefix", param_hint="--from")
    desc = stack.describe(stack_name) or {}
    endpoint = endpoint or stack.deployed_parameters(desc).get("SearchEmbeddingEndpoint") or None
    summary = _ingest_s3(source, outputs, endpoint, timeout, where, _reports_path(ctx, reports_path), as_json)
    if as_json:
        print_json(summary)
        return
    out.print(f"ingested {summary['ingested']} of {summary['objects']} objects under {source}: "
              f"{summary['images']} images ({summary['embedded']} embedded), {summary['reports']} reports",
              soft_wrap=True)
    for row in summary["failed"]:
        out.print(Text(f"  failed {row['key']}: {row['reason']}"), soft_wrap=True)


def _ingest_s3(prefix: str, outputs: dict[str, str], endpoint: str | None, timeout: float, where: Path,
               reports_path: Path, as_json: bool) -> dict[str, Any]:
    """The ingestion Lambda's work over every object under ``prefix`` (each embedding into the image index at
    ``where``, or OpenSearch's), then the report analyses into the report index."""
    import dataclasses

    from dicomflow.config import runtime
    from dicomflow.search import ingest as ing
    from dicomflow.search.reports import RuleEngine

    try:
        settings = dataclasses.replace(runtime(), search_table=outputs["SearchTableName"],
                                       search_output_uri=outputs["SearchOutputUri"], search_endpoint=endpoint,
                                       search_index_dir=str(where))
    except KeyError as exc:
        raise ImageIndexError(f"the stack has no output {exc}; update it with 'dicomflow infra deploy'") from None
    uris = aws.list_keys(prefix)
    if not uris:
        raise ImageIndexError(f"nothing under {prefix}")
    engine = RuleEngine()
    items, failed = [], []
    with _bar(as_json) as bar:
        task = bar.add_task(f"ingesting {prefix}", total=len(uris))
        for uri in uris:
            bucket, key = aws.parse_s3_uri(uri)
            try:
                items.append(ing.ingest_object(bucket, key, settings, engine, embed_timeout_s=timeout))
            except DicomflowError as exc:
                failed.append({"key": key, "reason": str(exc)})
            bar.advance(task)
    images = [i for i in items if i["kind"] == "image"]
    embedded = [i["embedding"] for i in images if i.get("embedding")]
    summary: dict[str, Any] = {"objects": len(uris), "ingested": len(items), "images": len(images),
                               "embedded": len(embedded), "reports": len(items) - len(images), "failed": failed,
                               "table": settings.search_table}
    if embedded:
        with open_image_index(where) as ix:
            summary["imageIndex"] = {"index": str(where), "model": ix.model, "indexed": len(embedded),
                                     "images": len(ix)}
    analyses = [f"{settings.search_output_uri.rstrip('/')}/reports/{i['studyInstanceUID']}.json"
                for i in items if i["kind"] == "report"]
    if analyses:
        with ri.open_report_index(reports_path) as rix:
            summary["reportIndex"] = ri.add_report_records(
                rix, ((u.rsplit("/", 1)[-1], aws.read_bytes(u) or b"") for u in analyses), engine)
    return summary


@search.command("similar")
@click.option("--image", "image", metavar="UID|FILE",
              help="An indexed image (SOPInstanceUID), or a DICOM file (embedded through --endpoint unless the "
                   "index holds it).")
@click.option("--study", "study_uid", metavar="UID", help="An indexed study (its first image is the query).")
@click.option("--endpoint", help="The classification endpoint that built the index, to embed a DICOM file with.")
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(1, MAX_K), help="How many.")
@click.option("--same-study", is_flag=True, help="Also return other images of the query's study.")
@click.option("--exclude-same-patient", is_flag=True, help="Leave out every study of the query's patient (the PACS "
              "is asked which, by PatientID; the index stores no patient identifier).")
@click.option("--modality", help="Only images of this modality (e.g. DX).")
@click.option("--label", help="Only images the model called this finding (e.g. Edema).")
@click.option("--view", "view_position", help="Only images of this ViewPosition (e.g. PA, AP, LL).")
@click.option("--body-part", help="Only images of this BodyPartExamined (e.g. CHEST).")
@index_option
@json_option
@click.pass_context
def similar(ctx: click.Context, image: str | None, study_uid: str | None, endpoint: str | None, k: int,
            same_study: bool, exclude_same_patient: bool, modality: str | None, label: str | None,
            view_position: str | None, body_part: str | None, index_dir: str | None, as_json: bool) -> None:
    """The K indexed images most like an image: ranked, with cosine similarity scores; never the query itself."""
    if bool(image) == bool(study_uid):
        raise click.UsageError("give exactly one of --image UID|FILE and --study UID")
    filters = {"modality": modality, "label": label, "view_position": view_position, "body_part": body_part}
    with open_image_index(_index_dir(ctx, index_dir)) as ix:
        model = ix.model
        vector, sop_uid, query_study = _query_image(ix, image, study_uid, endpoint)
        excluded = {query_study} if query_study and not same_study else set()
        if exclude_same_patient:
            from dicomflow.credentials import pacs_connection
            from dicomflow.dicom import dicomweb

            excluded |= set(same_patient_studies(dicomweb.connect(pacs_connection()), query_study))
        found = ix.similar(vector, k, exclude_sops=(sop_uid,), exclude_studies=excluded, **filters)
    if as_json:
        print_json({"query": {"sopInstanceUID": sop_uid, "studyInstanceUID": query_study}, "model": model,
                    "excludedStudies": len(excluded), "neighbours": [n.as_dict() for n in found]})
        return
    table = value_table("rank", "score", "study", "image", "model's findings",
                        title=f"images like {sop_uid} ({model['name']} {model['version']})")
    for n in found:
        table.add_row(str(n.rank), f"{n.score:.3f}", n.study_uid, n.sop_uid, Text(", ".join(n.labels) or "-"))
    out.print(table)
    if not found:
        out.print("no other image in the index matches")


def _query_image(ix: Any, image: str | None, study_uid: str | None, endpoint: str | None
                 ) -> tuple[Any, str, str]:
    """(vector, SOPInstanceUID, StudyInstanceUID) of the query: an indexed image or study, or a DICOM file."""
    if study_uid:
        images = ix.images_of_study(study_uid)
        if not images:
            raise ImageIndexError(f"study {study_uid} has no image in the index; add it with "
                                  "'dicomflow search index --endpoint NAME --study UID'")
        return ix.vector_of(images[0]), images[0], study_uid
    assert image is not None
    path = Path(image)
    if not path.is_file():
        if not is_uid(image):
            raise click.BadParameter(f"{image!r} is neither a file nor a SOPInstanceUID", param_hint="--image")
        return ix.vector_of(image), image, ix.study_of(image) or ""
    from dicomflow.dicom.objects import read_object

    data = path.read_bytes()
    ds = read_object(data, str(path))
    sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    if ix.study_of(sop):  # already indexed: its stored vector, no endpoint needed
        return ix.vector_of(sop), sop, study
    if not endpoint:
        raise click.UsageError(f"{path.name} is not in the index: give --endpoint NAME (the classification "
                               "endpoint that built it) to embed it")
    from dicomflow.inference import endpoint as ep

    response = ep.analyse_image(endpoint, data)
    if model_of(response) != ix.model:
        raise ImageIndexError(f"endpoint {endpoint} embeds with {model_of(response)}, the index holds "
                              f"{ix.model}: vectors of two models cannot be compared")
    return image_vector(response).vector, sop, study


@search.command("add-reports")
@click.option("--from", "source", help="A report file, a folder of them, or an s3:// prefix (the ingestion Lambda's "
              "reports/ analyses) [<data dir>/reports, where 'seed' writes them].")
@click.option("--engine", type=click.Choice(["rules", "comprehend-medical"]), default="rules", show_default=True,
              help="The local rule engine, or Amazon Comprehend Medical InferICD10CM (AWS only), for files that "
                   "carry no analysis.")
@reports_option
@json_option
@click.pass_context
def add_reports(ctx: click.Context, source: str | None, engine: str, reports_path: str | None, as_json: bool) -> None:
    """Analyse report files (entities, negation, ICD-10-CM) into the report index; a study's report is replaced."""
    from dicomflow.search.reports import ComprehendMedicalEngine, RuleEngine

    if source and source.startswith("s3://"):
        uris = aws.list_keys(source, ".json")
        records = ((uri.rsplit("/", 1)[-1], aws.read(uri)) for uri in uris)
        count, where = len(uris), source
    else:
        where = Path(source) if source else settings_from(ctx).data_dir / "reports"
        if not where.exists():
            raise ri.ReportIndexError(f"{where} does not exist: give a report file, a folder or an s3:// prefix")
        files = sorted(where.glob("*.json")) if where.is_dir() else [where]
        records = ((f.name, f.read_bytes()) for f in files)
        count = len(files)
    if not count:
        raise ri.ReportIndexError(f"no report file (*.json) in {where}")
    reader = RuleEngine() if engine == "rules" else ComprehendMedicalEngine(aws.client("comprehendmedical"))
    with ri.open_report_index(_reports_path(ctx, reports_path)) as ix, _bar(as_json) as bar:
        task = bar.add_task(f"indexing reports ({engine} for those without an analysis)", total=count)
        summary = ri.add_report_records(ix, records, reader, progress=lambda: bar.advance(task))
    if not summary["added"]:
        raise ri.ReportIndexError(f"no report could be indexed; first failure: {summary['failed'][0]['error']}")
    if as_json:
        print_json(summary)
        return
    out.print(f"indexed {summary['added']} of {count} reports; {summary['reports']} in {summary['index']}",
              soft_wrap=True)
    for row in summary["failed"]:
        out.print(Text(f"  failed {row['error']}"), soft_wrap=True)


@search.command("reports")
@click.argument("text", required=False)
@code_option
@click.option("--status", type=click.Choice(ri.STATUSES), help="Only mentions of the code(s) with this status "
              "(negative: denied, e.g. 'no effusion'; uncertain: 'possible ...').")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, ri.MAX_PAGE), help="Reports per page.")
@click.option("--cursor", help="The nextCursor of the previous page.")
@since_option
@until_option
@reports_option
@json_option
@click.pass_context
def reports(ctx: click.Context, text: str | None, codes: tuple[str, ...], status: str | None, limit: int,
            cursor: str | None, since: str | None, until: str | None, reports_path: str | None, as_json: bool) -> None:
    """Reports matching TEXT (words, "quoted phrases"), codes, status and study dates: best match first, with a
    snippet."""
    with ri.open_report_index(_reports_path(ctx, reports_path), create=False) as ix:
        page = ix.search(text, codes=codes, status=status, limit=limit, cursor=cursor, since=since, until=until)
    if as_json:
        print_json(page.as_dict())
        return
    table = value_table("study", "date", "accession", "snippet", "findings", title=f"{page.total} reports")
    for h in page.hits:
        said = ", ".join(dict.fromkeys(f"{m['finding'] or m['code']} ({m['status']})" for m in h.mentions))
        # Text: [..] in the snippet is the match, not markup
        table.add_row(h.study_uid, h.study_date or "-", h.accession or "-", Text(h.snippet), said or "-")
    out.print(table)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}", soft_wrap=True)


@search.command("facets")
@click.argument("text", required=False)
@code_option
@click.option("--status", type=click.Choice(ri.STATUSES), default="positive", show_default=True,
              help="Count mentions with this status.")
@click.option("--limit", default=30, show_default=True, type=click.IntRange(1, ri.MAX_PAGE), help="Codes to list.")
@since_option
@until_option
@reports_option
@json_option
@click.pass_context
def facets(ctx: click.Context, text: str | None, codes: tuple[str, ...], status: str, limit: int, since: str | None,
           until: str | None, reports_path: str | None, as_json: bool) -> None:
    """ICD-10-CM codes of the matching reports with how many reports mention each, blocks and chapters too."""
    with ri.open_report_index(_reports_path(ctx, reports_path), create=False) as ix:
        rows = ix.facets(text, codes=codes, status=status, limit=limit, since=since, until=until)
    if as_json:
        print_json({"status": status, "facets": rows})
        return
    table = value_table("code", "kind", "reports", "description", title=f"ICD-10-CM codes ({status} mentions)")
    for f in rows:
        table.add_row(f["code"], f["kind"], str(f["reports"]), f["description"])
    out.print(table)
