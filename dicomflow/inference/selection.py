"""Pick the series a model can use from QIDO-RS instance results of one study.

Works on DICOM JSON dicts (what QIDO returns), so the rules are tested without a PACS. A series is
usable when its modality fits the task; it is a PRIMARY image series (ORIGINAL for volumes, while
processed radiographs are DERIVED/PRIMARY by nature), never SR/SEG/KO/PR or another non-image object,
never a localizer/scout; it has enough slices; and it has one orientation. Among usable series
ORIGINAL beats DERIVED, then the most slices wins (ties: first seen). The answer says which series
was taken and why each other series was not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from dicomflow.dicom.elements import NON_IMAGE_MODALITIES, stored_value
from dicomflow.inference.errors import NoUsableSeries, StudyNotFound, UnusableSeries

# Tags asked for with QIDO ``includefield``.
MODALITY, SERIES_UID, SOP_UID, IMAGE_TYPE = "00080060", "0020000E", "00080018", "00080008"
ORIENTATION, SERIES_DESCRIPTION, SERIES_NUMBER, ROWS = "00200037", "0008103E", "00200011", "00280010"
FRAMES = "00280008"  # NumberOfFrames: an enhanced (multi-frame) instance holds a whole series
QIDO_FIELDS = [MODALITY, SERIES_UID, SOP_UID, IMAGE_TYPE, ORIENTATION, SERIES_DESCRIPTION, SERIES_NUMBER,
               ROWS, FRAMES]
SERIES_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
#: Series-level QIDO fields: enough to choose without reading every instance (the PACS answers a
#: series search from its database; an instance search with these fields reads every file).
SERIES_FIELDS = [MODALITY, SERIES_UID, SERIES_DESCRIPTION, SERIES_NUMBER, SERIES_INSTANCES]

TASK_MODALITIES = {
    "classification2d": ("CR", "DX"),
    "classification3d": ("MR", "CT"),
    "segmentation3d": ("MR", "CT"),
}
TASK_MIN_SLICES = {"classification2d": 1, "classification3d": 3, "segmentation3d": 3}
LOCALIZER_WORDS = ("localizer", "localiser", "scout", "survey", "topogram", "scanogram")
ORIENTATION_TOLERANCE = 1e-3


@dataclass
class Candidate:
    """One series of the study with the facts selection looks at."""

    series_uid: str
    modality: str
    description: str = ""
    instances: list[dict] = field(default_factory=list)
    reported_count: int | None = None  # from a series-level search; ``instances`` then holds a sample

    @property
    def count(self) -> int:
        """Slices: frames summed over the instances when all are known, else the reported instance count."""
        complete = self.reported_count is None or len(self.instances) >= self.reported_count
        if self.instances and complete:
            return sum(_frames(item) for item in self.instances)
        return self.reported_count if self.reported_count is not None else len(self.instances)


@dataclass
class Selection:
    """The chosen series, why, and why each other series was passed over."""

    series_uid: str
    modality: str
    instance_count: int
    reason: str
    rejected: dict[str, str] = field(default_factory=dict)
    #: When the choice came from a search restricted to these modalities (series of others not listed).
    searched_modalities: list[str] | None = None

    def as_dict(self) -> dict:
        out = {"seriesInstanceUID": self.series_uid, "modality": self.modality,
               "instances": self.instance_count, "reason": self.reason,
               "rejected": [{"seriesInstanceUID": k, "reason": v} for k, v in self.rejected.items()]}
        if self.searched_modalities is not None:
            out["searchedModalities"] = self.searched_modalities
        return out


def _values(item: dict, tag: str) -> list:
    return list((item.get(tag) or {}).get("Value") or [])


def _first(item: dict, tag: str, default: str = "") -> str:
    values = _values(item, tag)
    return str(values[0]) if values else default


def _frames(item: dict) -> int:
    try:
        return max(1, int(float(_first(item, FRAMES, "1") or 1)))
    except ValueError:
        return 1


def group_by_series(instances: Iterable[dict]) -> list[Candidate]:
    """QIDO instance results -> one :class:`Candidate` per series, in first-seen order."""
    series: dict[str, Candidate] = {}
    for item in instances:
        uid = _first(item, SERIES_UID)
        if not uid:
            continue
        cand = series.get(uid)
        if cand is None:
            cand = Candidate(uid, _first(item, MODALITY).upper(), _first(item, SERIES_DESCRIPTION))
            series[uid] = cand
        cand.instances.append(item)
    return list(series.values())


def candidates_from_series(rows: Iterable[dict]) -> list[Candidate] | None:
    """Series-level QIDO results -> candidates with their instance counts; None if a count is missing."""
    out = []
    for row in rows:
        uid = _first(row, SERIES_UID)
        count = _first(row, SERIES_INSTANCES)
        if not uid:
            continue
        if not count:
            return None  # this PACS does not report counts: use an instance-level search
        out.append(Candidate(uid, _first(row, MODALITY).upper(), _first(row, SERIES_DESCRIPTION),
                             reported_count=int(count)))
    return out


def instance_facts(ds: Any) -> dict:
    """The QIDO_FIELDS of a retrieved dataset as a DICOM JSON object (for the post-retrieval check)."""
    def values(keyword: str) -> list:
        value = ds.get(keyword)
        if value is None or value == "":
            return []
        return [str(v) if keyword != "ImageOrientationPatient" else float(v) for v in
                (value if isinstance(value, list | tuple | MultiValue) else [value])]

    return {MODALITY: {"Value": values("Modality")}, SERIES_UID: {"Value": values("SeriesInstanceUID")},
            SOP_UID: {"Value": values("SOPInstanceUID")}, IMAGE_TYPE: {"Value": values("ImageType")},
            ORIENTATION: {"Value": values("ImageOrientationPatient")},
            SERIES_DESCRIPTION: {"Value": values("SeriesDescription")},
            FRAMES: {"Value": values("NumberOfFrames")}}


# The elements the facts other than SOP_UID come from, and SpecificCharacterSet (their text's decoding).
_FACT_TAGS = [Tag(int(tag, 16)) for tag in (MODALITY, SERIES_UID, IMAGE_TYPE, ORIENTATION, SERIES_DESCRIPTION,
                                            FRAMES, "00080005")]


def series_facts(datasets: list[Dataset]) -> list[dict]:
    """:func:`instance_facts` less SOP_UID of each dataset, evaluated once per distinct stored values.

    Instances of one series usually store the same bytes for these elements, so 200 instances cost
    one evaluation instead of 200 (~100 µs each); those with equal stored values share one dict.
    The values are converted in a copy holding just these elements: ``datasets`` keep their stored
    values, which volume assembly compares (a converted and a raw one compare unequal).
    """
    known: dict[tuple, dict] = {}
    out = []
    for ds in datasets:
        key = tuple(stored_value(ds, tag) for tag in _FACT_TAGS)
        try:
            facts = known.get(key)
        except TypeError:  # an element already converted to a list is not hashable: no sharing
            key, facts = None, None
        if facts is None:
            copy = Dataset({tag: ds.get_item(tag) for tag in _FACT_TAGS if tag in ds})
            facts = {tag: value for tag, value in instance_facts(copy).items() if tag != SOP_UID}
            if key is not None:
                known[key] = facts
        out.append(facts)
    return out


def check_retrieved(datasets: list, series_uid: str, task: str, modalities: tuple[str, ...] | None = None) -> None:
    """Every retrieved instance fits ``task`` (image type, one orientation); else :class:`UnusableSeries`."""
    cands = group_by_series(series_facts(datasets))
    for cand in cands:
        why = why_unusable(cand, task, modalities)
        if why:
            raise UnusableSeries(f"series {series_uid} cannot be used by the {task} model: {why}")


def _orientation_label(iop: list[float]) -> str:
    if len(iop) != 6:
        return "unknown orientation"
    row, col = iop[:3], iop[3:]
    normal = [row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2],
              row[0] * col[1] - row[1] * col[0]]
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return ("sagittal", "coronal", "axial")[axis]


def allowed_modalities(task: str, modalities: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The modalities a ``task`` model takes: the model's own list, else the task's defaults."""
    return tuple(m.upper() for m in (modalities or TASK_MODALITIES.get(task, ())))


def why_unusable(cand: Candidate, task: str, modalities: tuple[str, ...] | None = None) -> str | None:
    """None if the series fits ``task``, else a short reason."""
    allowed = allowed_modalities(task, modalities)
    if cand.modality in NON_IMAGE_MODALITIES:
        return f"{cand.modality} is not an image series"
    if allowed and cand.modality not in allowed:
        return f"modality {cand.modality or '(none)'} does not fit a {task} model ({'/'.join(allowed)})"
    desc = cand.description.lower()
    if any(w in desc for w in LOCALIZER_WORDS):
        return f"localizer series ({cand.description!r})"
    for item in cand.instances:
        image_type = [str(v).upper() for v in _values(item, IMAGE_TYPE)]
        if "LOCALIZER" in image_type:
            return "localizer images (ImageType LOCALIZER)"
        shown = "/".join(image_type[:2])
        if len(image_type) > 1 and image_type[1] != "PRIMARY":
            return f"secondary images (ImageType {shown}), not PRIMARY"
        # Processed radiographs are DERIVED/PRIMARY by nature; volumes must be ORIGINAL (no MPR/MIP).
        if image_type and image_type[0] != "ORIGINAL" and task != "classification2d":
            return f"derived images (ImageType {shown}), not ORIGINAL/PRIMARY"
    need = TASK_MIN_SLICES.get(task, 1)
    if cand.count < need:
        return f"{cand.count} slice(s); a {task} model needs at least {need}"
    orientations = []
    for item in cand.instances:
        iop = [float(v) for v in _values(item, ORIENTATION)]
        if iop and not any(all(abs(a - b) <= ORIENTATION_TOLERANCE for a, b in zip(iop, o, strict=True))
                           for o in orientations):
            orientations.append(iop)
    if len(orientations) > 1:
        return f"{len(orientations)} different slice orientations in one series"
    # A PACS that ignores includefield gives no orientation: volume assembly checks it after retrieval.
    return None


def _is_original(cand: Candidate) -> bool:
    return all((_values(i, IMAGE_TYPE) or ["ORIGINAL"])[0].upper() == "ORIGINAL" for i in cand.instances)


def _describe(cand: Candidate, task: str) -> str:
    iop = [float(v) for v in _values(cand.instances[0], ORIENTATION)] if cand.instances else []
    kind = "ORIGINAL/PRIMARY" if _is_original(cand) else "DERIVED/PRIMARY"
    parts = [cand.modality, f"{cand.count} {'image' if cand.count == 1 else 'slices'}", kind]
    if task != "classification2d":
        parts.append(f"one {_orientation_label(iop)} orientation" if iop
                     else "orientation not reported by QIDO (checked on retrieval)")
    return ", ".join(parts)


def select_series(instances: Iterable[dict], task: str, series_uid: str | None = None,
                  modalities: tuple[str, ...] | None = None) -> Selection:
    """Choose the series for ``task`` from a study's QIDO instance results.

    With ``series_uid`` the caller's series is checked (not replaced). Raises
    :class:`StudyNotFound` for an empty study, :class:`UnusableSeries` when the named series does
    not fit, and :class:`NoUsableSeries` with every series' reason when none fits.
    """
    return select_candidate(group_by_series(instances), task, series_uid, modalities)


def select_candidate(candidates: list[Candidate], task: str, series_uid: str | None = None,
                     modalities: tuple[str, ...] | None = None) -> Selection:
    """:func:`select_series` on candidates already grouped (from instance or series-level searches)."""
    if not candidates:
        raise StudyNotFound("the study has no instances in the PACS; check the studyInstanceUID")
    if series_uid:
        match = [c for c in candidates if c.series_uid == series_uid]
        if not match:
            raise StudyNotFound(f"series {series_uid} is not in the study; omit seriesInstanceUID to let the "
                                "container choose, or check the UID")
        why = why_unusable(match[0], task, modalities)
        if why:
            raise UnusableSeries(f"series {series_uid} cannot be used by the {task} model: {why}")
        return Selection(series_uid, match[0].modality, match[0].count,
                         f"requested by the caller; {_describe(match[0], task)}")
    rejected: dict[str, str] = {}
    usable: list[Candidate] = []
    for cand in candidates:
        why = why_unusable(cand, task, modalities)
        if why:
            rejected[cand.series_uid] = why
        else:
            usable.append(cand)
    if not usable:
        detail = "; ".join(f"{uid}: {why}" for uid, why in rejected.items())
        raise NoUsableSeries(f"no series in the study fits the {task} model ({detail})")
    best = max(usable, key=lambda c: (_is_original(c), c.count))  # max keeps the first of equals
    for cand in usable:
        if cand is not best:
            why = ("ORIGINAL images" if _is_original(best) and not _is_original(cand)
                   else f"more slices ({best.count} vs {cand.count})")
            rejected[cand.series_uid] = f"usable, but {best.series_uid} has {why}"
    return Selection(best.series_uid, best.modality, best.count,
                     f"{_describe(best, task)}; the only usable series" if len(usable) == 1
                     else f"{_describe(best, task)}; most slices of {len(usable)} usable series", rejected)
