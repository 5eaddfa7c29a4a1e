"""Series retrieval from Orthanc: ours against the raw transfer, the bare decode, and the ways peers do it.

Starts its own Orthanc on free ports in a temporary data dir, stores a 30-slice 512x512 and a
200-slice 256x256 synthetic MR series (uncompressed, as most PACS store MR), then times every way
in turn within each repeat (one untimed warm-up of each), in milliseconds, median (min-max):

floors, the fastest known way to do the bare part:
* ``raw read``: the same multipart WADO-RS answer read from the socket into one preallocated buffer
  (``http.client``'s ``readinto``, the transfer coding undone, nothing else);
* ``decode``: the pixel bytes of the already parsed datasets to one float32 volume
  (``np.frombuffer`` per slice into a preallocated array: no checks, no rescale, no geometry);
ours:
* ``ours: datasets``: :func:`dicomflow.dicom.dicomweb.retrieve_series`, one request parsed to datasets;
* ``ours: volume``: that plus :func:`dicomflow.dicom.volume.load_image` (checks, geometry, rescale);
the ways a user or a peer would do it, each to the same float32 volume:
* ``dicomweb-client``: ``DICOMwebClient.retrieve_series`` (the library's reader) then ``load_image``;
* ``MONAI Label``: its DICOMweb datastore's download (``retrieve_series``, each instance written as a
  ``.dcm`` file) then the files read back;
* ``per-instance``: QIDO for the instances then one WADO-RS GET per instance, in sequence (the AWS
  sample's way).

Targets: ours (datasets) within 2x the raw read, and ours (volume) at least 2x faster than the
dicomweb-client way.

Usage: ``.venv/bin/python bench/bench_retrieval.py [--repeats 7] [--json]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import requests
from _cloud import private_cloud
from _stats import MIN_REPEATS, check_repeats, interleaved, ratio, table
from dicomweb_client.api import DICOMwebClient

from dicomflow.credentials import PacsConnection
from dicomflow.demo import synthetic
from dicomflow.dicom import dicomweb
from dicomflow.dicom import json as dj
from dicomflow.dicom.volume import load_files, load_image

SERIES = ((30, 512), (200, 256))  # (slices, rows = columns)
ACCEPT_SERIES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: ours (datasets) / raw read at most; dicomweb-client volume / ours volume at least
TARGET_OVER_RAW, TARGET_OVER_CLIENT = 2.0, 2.0


def make_series(slices: int, size: int, seed: int) -> list:
    """A geometrically valid MR series of ``slices`` x ``size``^2 with random 12-bit pixels."""
    series = synthetic.hippocampus_series(1, seed=seed, shape=(slices, 16, 16))[0]
    rng = np.random.default_rng(seed)
    for ds in series.datasets:
        ds.Rows = ds.Columns = size
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    return series.datasets


class RawReader:
    """The floor of the transfer: one GET of the series, its body read into a buffer allocated once."""

    def __init__(self, session: requests.Session, url: str) -> None:
        self.session, self.url = session, url
        first = session.get(url, headers={"Accept": ACCEPT_SERIES}, timeout=120)  # learns the answer's size
        first.raise_for_status()
        self.buffer = bytearray(len(first.content))

    def _read(self) -> int:
        response = self.session.get(self.url, headers={"Accept": ACCEPT_SERIES}, stream=True, timeout=120)
        response.raise_for_status()
        readinto = response.raw._fp.readinto  # http.client: de-chunked, straight from the socket
        view, filled = memoryview(self.buffer), 0
        while filled < len(view):
            n = readinto(view[filled:])
            if not n:
                break
            filled += n
        if filled != len(view) or response.raw._fp.read(1):
            raise AssertionError(f"the answer changed size between two reads ({filled} of {len(view)} bytes)")
        response.close()
        return filled

    def __call__(self) -> int:
        return self._read()


def decode_floor(datasets: list) -> tuple:
    """The bare decode: the uint16 pixel bytes of each slice into one preallocated float32 volume."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    pixels = [ds.PixelData for ds in datasets]

    def decode() -> np.ndarray:
        out = np.empty((len(pixels), rows, cols), np.float32)
        for k, raw in enumerate(pixels):
            out[k] = np.frombuffer(raw, np.uint16).reshape(rows, cols)
        return out

    return decode


def run(repeats: int) -> list[dict]:
    with private_cloud(pacs_only=True) as local:
        user, password = local.service("orthanc").credentials()
        conn = PacsConnection(local.settings.dicomweb_url, user, password)
        client = dicomweb.connect(conn)
        bare = requests.Session()
        bare.auth = conn.auth
        bare.headers["Accept-Encoding"] = "identity"
        library = DICOMwebClient(conn.url, session=bare)  # the library as a user would call it
        rows = []
        for k, (slices, size) in enumerate(SERIES):
            datasets = make_series(slices, size, seed=k)
            dicomweb.store(client, datasets)
            study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
            raw = RawReader(bare, f"{conn.url}/studies/{study}/series/{series}")
            parsed = dicomweb.retrieve_series(client, study, series)
            volume, _ = load_image(parsed)
            assert volume.shape == (slices, size, size)
            files = local.home / f"monai-label-{k}"

            def checked(got: np.ndarray, n: int = slices) -> np.ndarray:
                assert got.shape[0] == n
                return got

            def ours_volume(study: str = study, series: str = series) -> np.ndarray:
                return checked(load_image(dicomweb.retrieve_series(client, study, series))[0])

            def dicomweb_client(study: str = study, series: str = series) -> np.ndarray:
                return checked(load_image(library.retrieve_series(study, series))[0])

            def monai_label(study: str = study, series: str = series, files: Path = files) -> np.ndarray:
                files.mkdir(exist_ok=True)
                paths = []
                for ds in library.retrieve_series(study, series):
                    paths.append(files / f"{ds.SOPInstanceUID}.dcm")
                    ds.save_as(paths[-1])
                return checked(load_files(paths)[0])

            def per_instance(study: str = study, series: str = series) -> np.ndarray:
                found = dicomweb.search_instances(client, study, series)
                got = [dicomweb.retrieve_instance(client, study, series, dj.value(i, "SOPInstanceUID"))
                       for i in found]
                return checked(load_image(got)[0])

            times = interleaved({
                "raw read": raw,
                "decode": decode_floor(parsed),
                "ours: datasets": lambda study=study, series=series: dicomweb.retrieve_series(client, study,
                                                                                              series),
                "ours: volume": ours_volume,
                "dicomweb-client": dicomweb_client,
                "MONAI Label": monai_label,
                "per-instance": per_instance,
            }, repeats)
            rows.append({"series": f"{slices}x{size}x{size}", "mb": len(raw.buffer) / 1e6, "times": times})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help=f"timed repeats of each way (>= {MIN_REPEATS})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    rows = run(check_repeats(args.repeats))
    if args.json:
        print(json.dumps([{"series": r["series"], "mb": round(r["mb"], 2),
                           "ms": {k: v.as_dict() for k, v in r["times"].items()}} for r in rows], indent=2))
        return
    for r in rows:
        t = r["times"]
        print(f"\n{r['series']} MR, {r['mb']:.1f} MB answer, ms median (min-max) over {args.repeats} repeats")
        print(table(["way", "ms", "x raw read", "x ours: volume"],
                    [[name, s.text(), f"{ratio(s, t['raw read']):.2f}", f"{ratio(s, t['ours: volume']):.2f}"]
                     for name, s in t.items()]))
        over_raw = ratio(t["ours: datasets"], t["raw read"])
        over_client = ratio(t["dicomweb-client"], t["ours: volume"])
        decode_ours = t["ours: volume"].median - t["ours: datasets"].median
        raw_met = "met" if over_raw <= TARGET_OVER_RAW else "NOT met"
        client_met = "met" if over_client >= TARGET_OVER_CLIENT else "NOT met"
        print(f"ours: datasets {over_raw:.2f}x the raw read (target <= {TARGET_OVER_RAW}: {raw_met}); volume "
              f"{over_client:.1f}x faster than dicomweb-client (target >= {TARGET_OVER_CLIENT}: {client_met}); our "
              f"decode step ~{decode_ours:.1f} ms against the bare decode {t['decode'].median:.1f} ms")


if __name__ == "__main__":
    main()
