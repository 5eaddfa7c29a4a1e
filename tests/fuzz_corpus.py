"""A generated, seeded corpus of hostile and careless inputs for every entry point (the reliability suite).

Each generator returns ``(name, input)`` pairs; the same seed always gives the same corpus, so a
failure names a case that can be replayed. Sizes are CI-sized; ``scale`` multiplies the random part.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

UID = "1.2.826.0.1.3680043.8.498.{}"
DEEP = (64, 1_000, 5_000, 50_000)

BAD_URLS = [
    "http://[::1/dicom-web", "http://" + "a" * 100_000, "http://pacs:99999/dicom-web", "http://pacs:-1/x",
    "javascript:alert(1)", "file:///etc/passwd", "gopher://pacs/x", "http://", "http:///dicom-web",
    "http://user:pw@pacs/dicom-web", "http://pacs/dicom web", "http://pacs/dicom-web\r\nX-Injected: 1",
    "http://pacs/a/../b", "http://pacs/%2e%2e/b", "http://pacs/x?y=1", "http://pacs/x#frag", "HTTP://\u00fcnicode/x",
    "http://127.0.0.1:1/dicom-web", "http://localhost:1/dicom-web", "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:127.0.0.1]:1/x", "\\\\server\\share", "http:\\\\pacs\\x", "", " ", "http://pacs\x00.evil/x",
]
BAD_UIDS = ["", " ", "1." * 40, "abc", "1..2", ".1.2", "1.2.", "\u0661.\u0662", "1.2.3\n4", "1" * 65, "-1.2",
            "1.2.3 ", "0x12.3", "1.2e3"]
WRONG_TYPES: list[Any] = [None, True, 0, -1, 1.5e308, [], {}, [1, 2], {"a": 1}, "x" * 20_000]


def _deep(kind: str, n: int) -> bytes:
    return (("[" * n + "]" * n) if kind == "list" else ('{"a":' * n + "1" + "}" * n)).encode()


def study_json_bodies(seed: int = 0, scale: int = 1) -> list[tuple[str, bytes]]:
    """Study JSON request bodies (bytes, as a client would send them)."""
    rng = random.Random(seed)
    study = UID.format(1)
    base = {"studyInstanceUID": study}
    out: list[tuple[str, bytes]] = [("valid-minimal", json.dumps(base).encode())]
    for n in DEEP:
        out += [(f"deep-list-{n}", _deep("list", n)), (f"deep-object-{n}", _deep("object", n))]
        out.append((f"deep-in-field-{n}", b'{"studyInstanceUID": "' + study.encode() + b'", "outputs": '
                    + _deep("list", n) + b"}"))
    for i, url in enumerate(BAD_URLS):
        out.append((f"url-{i}", json.dumps({**base, "dicomweb": {"url": url}}).encode()))
    for i, uid in enumerate(BAD_UIDS):
        out.append((f"study-uid-{i}", json.dumps({"studyInstanceUID": uid}).encode()))
        out.append((f"series-uid-{i}", json.dumps({**base, "seriesInstanceUID": uid}).encode()))
    for field in ("studyInstanceUID", "seriesInstanceUID", "outputs", "storeToPacs", "dicomweb", "outputS3Uri"):
        for j, value in enumerate(WRONG_TYPES):
            out.append((f"type-{field}-{j}", json.dumps({**base, field: value}).encode()))
    for j, value in enumerate(WRONG_TYPES):
        out.append((f"type-url-{j}", json.dumps({**base, "dicomweb": {"url": value}}).encode()))
        out.append((f"type-auth-{j}", json.dumps({**base, "dicomweb": {"auth": value}}).encode()))
        out.append((f"type-secret-{j}", json.dumps({**base, "dicomweb": {"auth": {"secretArn": value}}}).encode()))
    out += [
        ("top-array", b"[1,2,3]"), ("top-string", b'"1.2.3"'), ("top-number", b"42"), ("top-null", b"null"),
        ("empty", b""), ("whitespace", b"   \n"), ("not-json", b"{study: 1}"), ("trailing-garbage", b'{"a":1}xyz'),
        ("bom", b"\xef\xbb\xbf" + json.dumps(base).encode()),
        ("latin1", '{"studyInstanceUID": "\xe9"}'.encode("latin-1")),
        ("nan", b'{"studyInstanceUID": "1.2", "storeToPacs": NaN}'), ("infinity", b'{"outputs": Infinity}'),
        ("duplicate-keys", b'{"studyInstanceUID": "1.2.3", "studyInstanceUID": "x"}'),
        ("many-keys", json.dumps({f"k{i}": i for i in range(5000)}).encode()),
        ("many-outputs", json.dumps({**base, "outputs": ["sr"] * 20_000}).encode()),
        ("unknown-output", json.dumps({**base, "outputs": ["html", "<script>"]}).encode()),
        ("credentials-in-auth",
         json.dumps({**base, "dicomweb": {"auth": {"username": "a", "password": "b"}}}).encode()),
        ("huge-unicode", json.dumps({**base, "seriesInstanceUID": "\U0001F600" * 10_000}).encode()),
        ("over-inline-limit", b'{"studyInstanceUID": "1.2.3", "x": "' + b"a" * 130_000 + b'"}'),
        ("null-bytes", b'{"studyInstanceUID": "1.2\x00.3"}'),
    ]
    keys = ["studyInstanceUID", "seriesInstanceUID", "outputs", "storeToPacs", "dicomweb", "outputS3Uri", "zzz"]
    values: list[Any] = [study, "1.2.3", ["json", "sr"], True, {"url": "http://x/y"}, "s3://b/k", *WRONG_TYPES[:8]]
    for i in range(60 * scale):  # random shapes
        doc = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 5))}
        out.append((f"random-{i}", json.dumps(doc).encode()))
    return out


def raw_http_requests(valid_body: bytes) -> list[tuple[str, bytes]]:
    """Raw HTTP/1.1 byte strings for ``POST /invocations`` (and around it)."""
    def post(headers: str, body: bytes = valid_body) -> bytes:
        return f"POST /invocations HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body

    length = f"Content-Length: {len(valid_body)}\r\n"
    chunk = f"{len(valid_body):x}\r\n".encode() + valid_body + b"\r\n0\r\n\r\n"
    return [
        ("garbage-line", b"GARBAGE\r\n\r\n"), ("bad-version", b"GET /ping HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("no-host-1.1", b"GET /ping HTTP/1.1\r\n\r\n"), ("http-1.0", b"GET /ping HTTP/1.0\r\n\r\n"),
        ("weird-method", b"BREW /invocations HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("long-target", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("null-in-line", b"GET /pi\x00ng HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("cl-abc", post("Content-Length: abc\r\n")), ("cl-negative", post("Content-Length: -5\r\n")),
        ("cl-float", post("Content-Length: 1e3\r\n")), ("cl-list", post("Content-Length: 5, 6\r\n")),
        ("cl-conflict", post(f"Content-Length: {len(valid_body)}\r\nContent-Length: 3\r\n")),
        ("cl-and-te", post(f"{length}Transfer-Encoding: chunked\r\n", chunk)),
        ("te-gzip", post("Transfer-Encoding: gzip\r\n")), ("te-bad-size", post("Transfer-Encoding: chunked\r\n",
                                                                               b"zz\r\nabc\r\n0\r\n\r\n")),
        ("te-overflow", post("Transfer-Encoding: chunked\r\n", b"ffffffffffffffffffff\r\nabc\r\n")),
        ("te-smuggle", post("Transfer-Encoding: chunked\r\n",
                            b"0\r\n\r\nGET /execution-parameters HTTP/1.1\r\nHost: x\r\n\r\n")),
        ("te-valid", post("Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n", chunk)),
        ("header-no-colon", post(f"{length}BrokenHeader\r\n")), ("obs-fold", post(f"{length}X-A: 1\r\n  folded\r\n")),
        ("huge-header", post(f"{length}X-Big: {'a' * 70_000}\r\n")),
        ("many-headers", post(length + "".join(f"X-{i}: {i}\r\n" for i in range(2000)))),
        ("expect-continue", post(f"{length}Expect: 100-continue\r\nContent-Type: application/json\r\n")),
        ("content-type-xml", post(f"{length}Content-Type: application/xml\r\n")),
        ("accept-xml", post(f"{length}Content-Type: application/json\r\nAccept: application/xml\r\n")),
        ("over-limit", post("Content-Length: 200000\r\nContent-Type: application/json\r\n", b"{" + b" " * 199_999)),
        ("binary-body", post("Content-Length: 256\r\nContent-Type: application/json\r\n", bytes(range(256)))),
        ("upgrade", b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
        ("options", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("pipelined", post(f"{length}Content-Type: application/json\r\n") + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]


def pre_label_events(study: str, series: str, image_sop: str, sr_series: str, sr_sop: str,
                     seed: int = 0, scale: int = 1) -> list[tuple[str, Any]]:
    """Ground Truth pre-annotation events (decoded, as the Lambda runtime hands them over)."""
    rng = random.Random(seed)
    arn = "arn:aws:sagemaker:us-east-1:123456789012:labeling-job/fuzz"

    def event(source: Any, key: str = "source") -> dict:
        return {"version": "2018-10-16", "labelingJobArn": arn, "dataObject": {key: source}}

    uid_source = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    out: list[tuple[str, Any]] = [
        ("valid-instance", event(json.dumps({**uid_source, "SOPInstanceUID": image_sop}))),
        ("valid-series-ref", event(json.dumps(uid_source), "source-ref")),
        ("sr-instance", event(json.dumps({"StudyInstanceUID": study, "SeriesInstanceUID": sr_series,
                                          "SOPInstanceUID": sr_sop}))),
        ("sr-series", event(json.dumps({"StudyInstanceUID": study, "SeriesInstanceUID": sr_series}))),
        ("missing-instance", event(json.dumps({**uid_source, "SOPInstanceUID": UID.format(999)}))),
        ("not-a-dict", [1, 2]), ("string-event", "event"), ("none-event", None), ("no-data-object", {"a": 1}),
        ("data-object-list", {"dataObject": [1]}), ("empty-source", event("")), ("s3-source", event("s3://b/k")),
        ("orthanc-id-no-resolver", event("12345678-12345678-12345678-12345678-12345678")),
        ("bad-json-source", event("{not json")), ("source-int", event(42)), ("source-list", event([1])),
        ("source-dict-object", event(uid_source)),
        ("source-missing-series", event(json.dumps({"StudyInstanceUID": study}))),
        ("huge-source", event("x" * 200_000)),
    ]
    for n in DEEP:
        out.append((f"deep-source-{n}", event(_deep("object", n).decode())))
    for i, uid in enumerate(BAD_UIDS):
        out.append((f"uid-{i}", event(json.dumps({**uid_source, "SOPInstanceUID": uid}))))
    for i in range(15 * scale):
        source = {k: rng.choice([study, series, image_sop, "1.2.3", 7, None, ""]) for k in
                  rng.sample(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "x"], rng.randint(0, 4))}
        out.append((f"random-{i}", event(json.dumps(source) if rng.random() < 0.7 else source)))
    return out


def consolidation_cases(labels: list[str], sop: str, seed: int = 0, scale: int = 1) -> list[tuple[str, dict, Any]]:
    """``(name, event, payload)`` for the consolidation Lambda's logic."""
    rng = random.Random(seed)
    event = {"version": "2018-10-16", "labelingJobArn": "arn:aws:sagemaker:us-east-1:1:labeling-job/fuzz",
             "labelAttributeName": "findings", "labelCategories": labels, "payload": {"s3Uri": "s3://b/k"}}

    def answer(content: Any, worker: str = "w1") -> dict:
        return {"workerId": worker, "annotationData": {"content": content}}

    def item(object_id: Any, *answers: dict) -> dict:
        return {"datasetObjectId": object_id, "dataObject": {"content": json.dumps({
            "StudyInstanceUID": UID.format(1), "SeriesInstanceUID": UID.format(2), "SOPInstanceUID": sop})},
            "annotations": list(answers)}

    good = json.dumps({"labels": [labels[0]]})
    roi = {"label": labels[0], "sopInstanceUID": sop, "x": 1, "y": 2, "width": 3, "height": 4}
    garbled: list[Any] = ["", "   ", "{", "[1,2]", "null", "42", json.dumps({"nothing": 1}), 7, None, ["a"],
                          json.dumps({"labels": "Edema"}), json.dumps({"labels": [1, 2, None]}),
                          json.dumps({"rois": [{**roi, "x": "nan"}, {**roi, "width": -1},
                                               {**roi, "sopInstanceUID": "x"}]}),
                          json.dumps({"rois": [{"type": "freehand", "label": labels[0], "sopInstanceUID": sop,
                                                "points": [[0, 0]] * 2}]}),
                          json.dumps({"rois": [roi] * 5000}), json.dumps({"sliceLabels": {"bad uid": [labels[0]]}}),
                          json.dumps({"labels": ["\U0001F600" * 1000]}), json.dumps({"annotation": json.dumps(
                              {"annotation": json.dumps({"labels": [labels[0]]})})}),
                          json.dumps({"labels": [labels[0]], "timeSpentSeconds": -5})]
    out: list[tuple[str, dict, Any]] = [("valid", event, [item("0", answer(good))])]
    out.append(("object-id-zero", event, [item(0, answer(good))]))
    for n in DEEP:
        out.append((f"deep-answer-{n}", event, [item("1", answer(_deep("object", n).decode()),
                                                     answer(good, "w2"))]))
        out.append((f"deep-list-answer-{n}", event, [item("1", answer(_deep("list", n).decode()))]))
    for i, content in enumerate(garbled):
        out.append((f"garbled-{i}", event, [item(str(i), answer(content), answer(good, "w2"))]))
    out += [
        ("payload-dict", event, {"a": 1}), ("payload-none", event, None), ("payload-items-not-dicts", event, [1, "x"]),
        ("missing-object-id", event, [{"annotations": []}]), ("object-id-null", event, [item(None, answer(good))]),
        ("object-id-list", event, [item([1], answer(good))]), ("annotations-dict", event, [{
            "datasetObjectId": "1", "annotations": {"workerId": "w"}}]),
        ("no-attribute", {**event, "labelAttributeName": ""}, [item("1", answer(good))]),
        ("bad-categories", {**event, "labelCategories": "x"}, [item("1", answer(good))]),
        ("duplicate-workers", event, [item("1", answer(good), answer(good))]),
        ("no-annotations", event, [item("1")]),
        ("many-objects", event, [item(str(i), answer(good)) for i in range(300)]),
    ]
    for i in range(15 * scale):
        contents = [rng.choice(garbled + [good]) for _ in range(rng.randint(0, 4))]
        out.append((f"random-{i}", event, [item(str(i), *[answer(c, f"w{k}") for k, c in enumerate(contents)])]))
    return out


def series_mutations(seed: int = 0) -> list[tuple[str, Callable[[list[Dataset]], list[Dataset]], str | None]]:
    """``(name, mutate(datasets) -> datasets, expected)``: expected is a substring of the 422 message, or None
    when the mutated series is still a valid volume (the answer must then be a correct result)."""
    rng = random.Random(seed)

    def on(index: int, fn: Callable[[Dataset], None]) -> Callable[[list[Dataset]], list[Dataset]]:
        def mutate(datasets: list[Dataset]) -> list[Dataset]:
            fn(datasets[index % len(datasets)])
            return datasets
        return mutate

    def on_all(fn: Callable[[Dataset], None]) -> Callable[[list[Dataset]], list[Dataset]]:
        def mutate(datasets: list[Dataset]) -> list[Dataset]:
            for ds in datasets:
                fn(ds)
            return datasets
        return mutate

    def delete(keyword: str) -> Callable[[Dataset], None]:
        return lambda ds: delattr(ds, keyword) if keyword in ds else None

    def setter(keyword: str, value: Any) -> Callable[[Dataset], None]:
        return lambda ds: setattr(ds, keyword, value)

    def shuffle_numbers(datasets: list[Dataset]) -> list[Dataset]:
        numbers = list(range(1, len(datasets) + 1))
        rng.shuffle(numbers)
        for ds, n in zip(datasets, numbers, strict=True):
            ds.InstanceNumber = n
        return datasets

    def then(*fns: Callable[[list[Dataset]], list[Dataset]]) -> Callable[[list[Dataset]], list[Dataset]]:
        def mutate(datasets: list[Dataset]) -> list[Dataset]:
            for fn in fns:
                datasets = fn(datasets)
            return datasets
        return mutate

    def flip_pixels(ds: Dataset) -> None:
        data = bytearray(ds.PixelData)
        for _ in range(20):
            data[rng.randrange(len(data))] ^= 0xFF
        ds.PixelData = bytes(data)

    cases: list[tuple[str, Callable[[list[Dataset]], list[Dataset]], str | None]] = [
        ("valid", lambda d: d, None),
        ("one-slice-without-position-shuffled-numbers", then(on(3, delete("ImagePositionPatient")), shuffle_numbers),
         "lack ImagePositionPatient"),
        ("no-positions-shuffled-numbers", then(on_all(delete("ImagePositionPatient")), shuffle_numbers), None),
        ("nan-position", on(2, setter("ImagePositionPatient", ["nan", "0", "0"])), "ImagePositionPatient"),
        ("inf-position", on(4, setter("ImagePositionPatient", ["0", "inf", "0"])), "ImagePositionPatient"),
        ("two-value-position", on(1, setter("ImagePositionPatient", ["0", "0"])), "ImagePositionPatient"),
        ("missing-rows", on(0, delete("Rows")), "Rows"), ("missing-columns", on(5, delete("Columns")), "Columns"),
        ("missing-bits-allocated", on(2, delete("BitsAllocated")), "BitsAllocated"),
        ("zero-rows", on(1, setter("Rows", 0)), "Rows"),
        ("rescale-slope-zero", on_all(setter("RescaleSlope", "0")), "RescaleSlope 0"),
        ("rescale-slope-nan", on(3, setter("RescaleSlope", "nan")), "RescaleSlope"),
        ("truncated-pixels", on(6, lambda ds: setattr(ds, "PixelData", ds.PixelData[:-3])), "corrupt or truncated"),
        ("no-pixel-data", on(2, delete("PixelData")), "no pixel data"),
        ("mixed-sizes", on(1, lambda ds: (setattr(ds, "Rows", ds.Rows // 2),
                                          setattr(ds, "PixelData", ds.PixelData[:len(ds.PixelData) // 2]))),
         "mixed image sizes"),
        ("duplicate-position", lambda d: (setattr(d[2], "ImagePositionPatient", d[3].ImagePositionPatient), d)[1],
         "duplicate slice position"),
        ("missing-slice", lambda d: d[:4] + d[5:], "irregular slice spacing"),
        ("degenerate-orientation", on(0, setter("ImageOrientationPatient", [1, 0, 0, 1, 0, 0])), "orientation"),
        ("mixed-orientation", on(3, setter("ImageOrientationPatient", [1, 0, 0, 0, 0, -1])), "orientation"),
        ("garbage-instance-number-no-position", then(on_all(delete("ImagePositionPatient")),
                                                     on(2, setter("InstanceNumber", None))), None),
        ("flipped-pixel-bytes", on(5, flip_pixels), None), ("shuffled-numbers-only", shuffle_numbers, None),
        ("photometric-monochrome1", on_all(setter("PhotometricInterpretation", "MONOCHROME1")), None),
        ("bits-stored-over-allocated", on(1, setter("BitsStored", 40)), "corrupt or truncated"),
    ]
    for i in range(8):  # random position jitter below and above the spacing tolerance
        amount = rng.choice([0.001, 0.01, 0.5, 0.9])
        def jitter(d: list[Dataset], amount: float = amount, k: int = rng.randrange(1, 8)) -> list[Dataset]:
            pos = [float(v) for v in d[k].ImagePositionPatient]
            normal = np.cross([float(v) for v in d[k].ImageOrientationPatient[:3]],
                              [float(v) for v in d[k].ImageOrientationPatient[3:]])
            d[k].ImagePositionPatient = [str(round(p + amount * n * float(d[0].get("SliceThickness", 1) or 1), 4))
                                         for p, n in zip(pos, normal, strict=True)]
            return d
        cases.append((f"jitter-{i}-{amount}", jitter, None if amount < 0.05 else "irregular slice spacing"))
    return cases


def copy_series(datasets: list[Dataset]) -> list[Dataset]:
    """Independent copies, written and read back (what :func:`series_mutations` mutates)."""
    out = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out
