"""Synthetic sample data: chest-radiograph-like CR images with known CheXpert labels and
hippocampus-like MR series with a ground-truth anterior/posterior label volume.

Everything is deterministic in ``seed`` (and image ``i`` does not depend on ``n``, so a larger ``n``
extends a smaller one). UIDs are ``2.25`` UIDs hashed from the seed and index (:func:`synthetic_uid`).
Each image / series is its own study of its own obviously synthetic patient (``SYNTH-...``). All datasets carry the
mandatory modules of their IOD (checked with dicom3tools' ``dciodvfy`` in the tests).

Chest patterns (MONOCHROME2: bright = dense), each placed at a random place, side, size and contrast
over a random patient size and position, ribs, noise and exposure, so that the finding is a shape
against the anatomy a CNN must learn, not a region a thumbnail-level linear model can weigh:

* ``Cardiomegaly``: the heart is wide for its thorax (cardiothoracic ratio ~0.65 against ~0.45);
* ``Pleural Effusion``: fluid filling the base of one or both lungs, its meniscus rising laterally
  (every image has its own diaphragm height and bright abdomen below the lungs);
* ``Support Devices``: a thin tube from the top plus a small box (pacemaker); small bright dots
  (ECG leads, buttons) appear in any image;
* ``Lung Opacity``: several soft bright patches inside the lungs;
* ``Pneumothorax``: a dark, texture-free band along the outer edge of one lung;
* ``Lung Lesion``: one small, sharp, round bright nodule.

The other CheXpert classes never occur; ``No Finding`` is set when none of the above is.

Hippocampus volumes are (z, y, x) arrays on an axial grid in LPS: ``x`` (columns) runs to the
patient's left, ``y`` (rows) to posterior, ``z`` (slices) to superior. Label 1 (anterior, the head)
lies at smaller ``y`` than label 2 (posterior, body and tail). Size, in-plane orientation, position
in the field of view, contrast, bias field and noise vary by subject (a fixed mask does not fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from dicomflow.dicom.uid import derived_uid

__all__ = [
    "CHEST_CLASSES",
    "SyntheticImage",
    "SyntheticSeries",
    "chest_radiographs",
    "hippocampus_series",
    "synthetic_uid",
]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
NO_FINDING = "No Finding"
#: The classes whose patterns the chest generator draws (a subset of the 14 CheXpert classes).
CHEST_CLASSES: tuple[str, ...] = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Support Devices",
    "Lung Opacity",
    "Pneumothorax",
    "Lung Lesion",
)
CHEST_PREVALENCE = 0.3
CHEST_FIELD_MM = 380.0  # width of the detector the image represents
_BITS = 12
_MAX = (1 << _BITS) - 1
_BASE_DATE = date(2024, 1, 1)


@dataclass
class SyntheticImage:
    """One 2D chest radiograph: the dataset (with file meta) and its labels."""

    dataset: Dataset
    labels: list[str]
    patient_id: str


@dataclass
class SyntheticSeries:
    """One MR series: slices in order, the label volume (z, y, x) and the voxel spacing (z, y, x) in mm."""

    datasets: list[Dataset]
    label_volume: np.ndarray
    spacing: tuple[float, float, float]
    patient_id: str
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    image_volume: np.ndarray | None = field(default=None, repr=False)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)




#: The structures of the synthetic hippocampus label volumes (label value 1 and 2), with their SNOMED CT code:
#: what a channel's ``classes.json`` says for them (``dicomflow.dicom.structures``).
HIPPOCAMPUS_STRUCTURES = [
    {"name": name, "label": f"Hippocampus {name}",
     "type": {"value": "5366008", "scheme": "SCT", "meaning": "Hippocampus"}}
    for name in ("anterior", "posterior")
]


def patient_prefix(kind: str, seed: int) -> str:
    """How the PatientIDs of the ``kind`` ("chest" or "hippocampus") studies of ``seed`` begin."""
    return f"SYNTH-{'CXR' if kind == 'chest' else 'HIPPO'}-{seed}-"


def synthetic_uid(*parts: object) -> str:
    """A deterministic ``2.25`` UID from ``parts`` (same parts, same UID)."""
    return derived_uid("dicomflow-synthetic", *parts)


# ---- common modules -----------------------------------------------------------------------------
def _base_dataset(*, sop_class: str, sop_uid: str, study_uid: str, series_uid: str, patient_id: str,
                  patient_name: str, modality: str, day: date, study_description: str,
                  series_description: str, series_number: int, instance_number: int) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMFLOW_SYN"
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    when = day.strftime("%Y%m%d")
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = when
    # Patient (obviously synthetic, de-identified by construction)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic data generated by dicomflow"
    # General Study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = when
    ds.StudyTime = "090000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = study_description
    # General Series
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = when
    ds.SeriesTime = "090000"
    ds.SeriesDescription = series_description
    # General Equipment
    ds.Manufacturer = "dicomflow synthetic data"  # a scanner of its own: not the "dicomflow" of results
    ds.ManufacturerModelName = "synthetic"
    ds.SoftwareVersions = "dicomflow"
    # General Image
    ds.InstanceNumber = instance_number
    ds.ContentDate = when
    ds.ContentTime = "090000"
    ds.BurnedInAnnotation = "NO"
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module for a uint16 MONOCHROME2 image with 12 bits stored."""
    arr = np.ascontiguousarray(pixels, dtype=np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = _BITS
    ds.HighBit = _BITS - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()


def _to_uint12(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * _MAX), 0, _MAX).astype(np.uint16)


# ---- chest radiographs ----------------------------------------------------------------------------
def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _soft(d2: np.ndarray, edge: float = 0.15) -> np.ndarray:
    """1 inside an ellipse (``d2 < 1``), 0 outside, with a soft edge."""
    return np.clip((1.0 - d2) / edge, 0.0, 1.0)


def _chest_image(rng: np.random.Generator, size: int, labels: set[str]) -> np.ndarray:
    """A float image in [0, 1] drawing the patterns of ``labels`` (see the module docstring).

    The image must matter at more than a thumbnail: the patient's size and position, the exposure
    (gain and offset), and each finding's place, side, size and contrast vary by image, so a finding
    is a shape relative to the anatomy (a heart wide for its thorax, a meniscus at one lung base), not
    a fixed bright region.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    j = lambda s: rng.uniform(-s, s)  # noqa: E731 - position jitter
    k = rng.uniform(0.7, 1.2)  # thorax size
    by, bx = 0.58 + j(0.06), 0.5 + j(0.06)  # body centre
    img = np.full((size, size), 0.08, np.float32)
    # body (soft tissue) and lungs (dark, air)
    body = _soft(_ellipse(yy, xx, by, bx, 0.55 * k, (0.45 + j(0.03)) * k), 0.2)
    img += 0.35 * body
    lung_c = [(by - 0.08 * k + j(0.02), bx - 0.19 * k + j(0.02)), (by - 0.08 * k + j(0.02), bx + 0.19 * k + j(0.02))]
    lung_r = ((0.27 + j(0.02)) * k, (0.13 + j(0.015)) * k)
    # each lung ends at its diaphragm dome (its own height); below it the abdomen is bright
    lungs = np.zeros_like(img)
    for cy, cx in lung_c:
        dome = cy + lung_r[0] * rng.uniform(0.5, 0.9) + 0.1 * k * ((xx - cx) / lung_r[1]) ** 2
        lung = _soft(_ellipse(yy, xx, cy, cx, *lung_r), 0.3) * np.clip((dome - yy) / 0.015, 0, 1)
        lungs = np.maximum(lungs, lung)
        img += rng.uniform(0.08, 0.2) * np.clip((yy - dome) / 0.03, 0, 1) * (np.abs(xx - cx) < lung_r[1]) * body
    img -= rng.uniform(0.16, 0.26) * lungs
    # ECG leads, buttons: small bright dots anywhere, in any image
    for _ in range(int(rng.integers(0, 4))):
        py, px, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.012, 0.03)
        img += rng.uniform(0.3, 0.6) * _soft(_ellipse(yy, xx, py, px, r, r), 0.3)
    # ribs: faint periodic arcs over the lungs, spine: a bright central column
    phase = rng.uniform(0, 2 * np.pi)
    img += 0.05 * lungs * (np.sin((yy + 0.15 * np.abs(xx - bx)) * 2 * np.pi * 9 / k + phase) > 0.6)
    img += 0.12 * np.clip(1 - np.abs(xx - bx - j(0.01)) / (0.045 * k), 0, 1) * body

    if "Pneumothorax" in labels:  # dark, texture-free crescent at the outer edge of one lung
        side = rng.integers(2)
        cy, cx = lung_c[side]
        outer = cx + (-1 if side == 0 else 1) * lung_r[1] * rng.uniform(0.45, 0.65)
        band = _soft(_ellipse(yy, xx, cy + j(0.06), outer, lung_r[0] * rng.uniform(0.6, 0.95),
                              lung_r[1] * rng.uniform(0.35, 0.55)), 0.2)
        img = img * (1 - rng.uniform(0.7, 0.95) * band) + 0.01 * band
    # heart: its width against the thorax is what cardiomegaly means (ratio ~0.45 normal, ~0.65 enlarged)
    ratio = rng.uniform(0.57, 0.7) if "Cardiomegaly" in labels else rng.uniform(0.41, 0.52)
    heart_rx = ratio * (lung_c[1][1] - lung_c[0][1] + 2 * lung_r[1]) / 2
    heart_r = (heart_rx * rng.uniform(0.8, 0.95), heart_rx)
    img += rng.uniform(0.22, 0.36) * _soft(_ellipse(yy, xx, by + 0.05 * k + j(0.02), bx + 0.03 * k + j(0.02),
                                                    *heart_r), 0.25)
    if "Pleural Effusion" in labels:  # fluid filling the lung base, its meniscus rising at the lateral edge
        sides = [0, 1] if rng.random() < 0.4 else [int(rng.integers(2))]
        bright = rng.uniform(0.14, 0.26)
        for side in sides:
            cy, cx = lung_c[side]
            outer = -1 if side == 0 else 1
            level = cy + lung_r[0] * rng.uniform(0.15, 0.5)
            meniscus = level - 0.1 * k * np.clip(outer * (xx - cx) / lung_r[1], 0, 1.2) ** 2
            fluid = np.clip((yy - meniscus) / 0.02, 0, 1) * _soft(_ellipse(yy, xx, cy, cx, *lung_r), 0.3)
            img += bright * fluid
    if "Lung Opacity" in labels:  # soft bright patches inside a lung
        bright = rng.uniform(0.14, 0.26)
        for _ in range(int(rng.integers(2, 5))):
            cy, cx = lung_c[int(rng.integers(2))]
            py, px = cy + j(lung_r[0] * 0.6), cx + j(lung_r[1] * 0.6)
            r = rng.uniform(0.035, 0.07) * k
            img += bright * np.exp(-(((yy - py) ** 2 + (xx - px) ** 2) / (2 * r * r)))
    if "Lung Lesion" in labels:  # one small, sharp, round nodule
        cy, cx = lung_c[int(rng.integers(2))]
        py, px = cy + j(lung_r[0] * 0.7), cx + j(lung_r[1] * 0.6)
        r = rng.uniform(0.022, 0.038) * k
        img += rng.uniform(0.28, 0.45) * _soft(_ellipse(yy, xx, py, px, r, r), 0.3)
    if "Support Devices" in labels:  # a thin bright tube from the top plus a pacemaker-like box
        x0 = rng.uniform(0.25, 0.75)
        x1 = x0 + j(0.2)
        y_end = rng.uniform(0.4, 0.72)
        t = np.clip(yy / y_end, 0, 1)
        path = x0 + (x1 - x0) * t**2
        width = 1.2 / size + rng.uniform(0.001, 0.004)
        img += rng.uniform(0.25, 0.5) * (np.abs(xx - path) < width) * (yy < y_end)
        py, px = rng.uniform(0.1, 0.45), rng.uniform(0.12, 0.88)
        img += rng.uniform(0.3, 0.55) * ((np.abs(yy - py) < 0.022) & (np.abs(xx - px) < 0.03))
    img = img * rng.uniform(0.75, 1.25) + rng.uniform(-0.06, 0.06)  # exposure: gain and offset
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # quantum noise
    return np.clip(img, 0.0, 1.0)


def _chest_labels(rng: np.random.Generator) -> list[str]:
    present = [c for c in CHEST_CLASSES if rng.random() < CHEST_PREVALENCE]
    return present or [NO_FINDING]


def chest_radiographs(n: int, seed: int = 0, size: int = 256) -> list[SyntheticImage]:
    """``n`` synthetic PA chest CR images (``size`` x ``size``, MONOCHROME2, 12-bit) with known labels."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if size < 32:
        raise ValueError("size must be >= 32 pixels")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        labels = _chest_labels(rng)
        pixels = _to_uint12(_chest_image(rng, size, set(labels)))
        patient_id = f"{patient_prefix('chest', seed)}{i:04d}"
        ds = _base_dataset(
            sop_class=CR_IMAGE_STORAGE,
            sop_uid=synthetic_uid("chest", seed, i, "sop"),
            study_uid=synthetic_uid("chest", seed, i, "study"),
            series_uid=synthetic_uid("chest", seed, i, "series"),
            patient_id=patient_id,
            patient_name=f"Synthetic^Chest {i:04d}",
            modality="CR",
            day=_BASE_DATE + timedelta(days=i % 365),
            study_description="Synthetic chest radiograph PA",
            series_description="Synthetic chest PA",
            series_number=1,
            instance_number=1,
        )
        # CR Series
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        # General Image / CR Image
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.PatientOrientation = ["L", "F"]
        spacing = round(CHEST_FIELD_MM / size, 6)
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.PixelSpacing = [spacing, spacing]
        ds.PresentationLUTShape = "IDENTITY"
        ds.WindowCenter = _MAX // 2
        ds.WindowWidth = _MAX
        ds.LossyImageCompression = "00"
        ds.AccessionNumber = f"CXR{seed % 100000}-{i:05d}"[:16]  # links the study to its report (SH, 16 chars)
        _set_pixels(ds, pixels)
        out.append(SyntheticImage(dataset=ds, labels=labels, patient_id=patient_id))
    return out


# ---- hippocampus MR series --------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], scale: int = 6) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled by linear interpolation."""
    coarse = rng.uniform(-1, 1, [max(2, s // scale + 2) for s in shape])
    axes = [np.linspace(0, c - 1, s) for c, s in zip(coarse.shape, shape, strict=True)]
    out = coarse
    for ax, pts in enumerate(axes):
        lo = np.floor(pts).astype(int).clip(0, out.shape[ax] - 2)
        w = (pts - lo).reshape([-1 if a == ax else 1 for a in range(3)])
        out = np.take(out, lo, axis=ax) * (1 - w) + np.take(out, lo + 1, axis=ax) * w
    return out


def _hippocampus_volumes(rng: np.random.Generator, shape: tuple[int, int, int],
                         spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], labels uint8) for one subject; sizes in mm so spacing changes nothing anatomical.

    The image must matter: the structure's size, in-plane orientation, position in the field of view
    (anywhere it fits), brightness against the background, the bias field and the noise all vary by
    subject, so no fixed mask fits the subjects and no intensity threshold finds it alone.
    """
    nz, ny, nx = shape
    sz, sy, sx = spacing
    zz, yy, xx = np.mgrid[0:nz, 0:ny, 0:nx].astype(np.float32)
    zz, yy, xx = zz * sz, yy * sy, xx * sx  # mm
    scale = rng.uniform(0.7, 1.2)  # subject size
    head_r = (6.0 * scale * rng.uniform(0.9, 1.1), 9.0 * scale * rng.uniform(0.9, 1.1),
              7.0 * scale * rng.uniform(0.9, 1.1))
    tail_len = 13.0 * scale * rng.uniform(0.9, 1.15)
    tail_r = (4.5 * scale, tail_len, 5.0 * scale)
    # along the long axis u (posterior, rotated in-plane by `angle`): the head, then the body and tail
    head_u = 0.0
    tail_u = head_u + head_r[1] * 0.7 + tail_len * 0.7
    front, back = head_u - head_r[1], tail_u + tail_len
    mid = (front + back) / 2
    head_u, tail_u = head_u - mid, tail_u - mid
    half_u = (back - front) / 2
    half_v = max(head_r[2], tail_r[2]) + 3.0
    half_z = max(head_r[0], tail_r[0]) + 3.0
    angle = rng.uniform(-0.45, 0.45)  # radians (about +-25 degrees)
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    half = (half_z, half_u * abs(ca) + half_v * abs(sa), half_u * abs(sa) + half_v * abs(ca))

    def centre(extent: float, h: float) -> float:  # anywhere the structure fits (else the middle)
        return rng.uniform(h, extent - h) if extent > 2 * h else extent / 2 + rng.uniform(-1, 1)

    cz, cy, cx = (centre(n * s, h) for n, s, h in zip(shape, spacing, half, strict=True))
    u = (yy - cy) * ca + (xx - cx) * sa
    v = -(yy - cy) * sa + (xx - cx) * ca
    w = zz - cz
    tail_dz, tail_dv, bend = rng.uniform(0.5, 2.5), rng.uniform(-2.5, 2.5), rng.uniform(-0.08, 0.08)

    def ellipsoid(cw: float, cu: float, cv: float, r: tuple[float, float, float], tilt: float = 0.0):
        dw = w - cw - tilt * (u - cu)
        return (dw / r[0]) ** 2 + ((u - cu) / r[1]) ** 2 + ((v - cv) / r[2]) ** 2

    head_d = ellipsoid(0.0, head_u, 0.0, head_r)
    tail_d = ellipsoid(tail_dz, tail_u, tail_dv, tail_r, tilt=0.15 + bend)
    labels = np.zeros(shape, np.uint8)
    labels[tail_d <= 1] = 2
    labels[head_d <= 1] = 1  # the head wins where they touch
    # image: a background level, bias field and noise of this subject; the structure brighter by a
    # subject-specific contrast (grey matter in white), with partial volume at its border
    tissue = np.clip(np.minimum(head_d, tail_d), 0, 2)
    structure = np.clip((1.25 - tissue) / 0.5, 0, 1)
    background = rng.uniform(0.25, 0.45)
    contrast = rng.uniform(0.18, 0.4)
    img = background + rng.uniform(0.03, 0.12) * _smooth_noise(rng, shape)
    img += contrast * structure * np.where(head_d < tail_d, 1.0, rng.uniform(0.8, 0.95))
    # a dark CSF-like cleft (temporal horn) above the head
    horn = ellipsoid(head_r[0] + 2.0, head_u, 0.0, (1.5, head_r[1] * 0.8, 3.0))
    img -= 0.2 * np.clip(1.5 - horn, 0, 1) * (labels == 0)
    img += rng.normal(0, rng.uniform(0.015, 0.035), shape)
    return np.clip(img, 0, 1).astype(np.float32), labels


def hippocampus_series(n: int, seed: int = 0, shape: tuple[int, int, int] = (32, 48, 40)) -> list[SyntheticSeries]:
    """``n`` synthetic axial MR series (``shape`` = slices, rows, columns) with anterior/posterior labels."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError("shape must be (z, y, x) with every size >= 8")
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        spacing = (1.2, 1.0, 1.0)
        image, labels = _hippocampus_volumes(rng, shape, spacing)
        pixels = _to_uint12(image)
        low, high = np.percentile(pixels, [1, 99.5])  # the series' own window, as a scanner writes it
        window = (int(round((low + high) / 2)), max(int(round(high - low)), 1))
        origin = tuple(round(float(rng.uniform(lo, hi)), 3) for lo, hi in ((-40, -20), (-40, -10), (-30, -10)))
        patient_id = f"{patient_prefix('hippocampus', seed)}{i:04d}"
        study_uid = synthetic_uid("hippo", seed, i, "study")
        series_uid = synthetic_uid("hippo", seed, i, "series")
        frame_uid = synthetic_uid("hippo", seed, i, "frame-of-reference")
        day = _BASE_DATE + timedelta(days=i % 365)
        datasets = []
        for k in range(shape[0]):
            ds = _base_dataset(
                sop_class=MR_IMAGE_STORAGE,
                sop_uid=synthetic_uid("hippo", seed, i, "sop", k),
                study_uid=study_uid,
                series_uid=series_uid,
                patient_id=patient_id,
                patient_name=f"Synthetic^Hippocampus {i:04d}",
                modality="MR",
                day=day,
                study_description="Synthetic hippocampus MR",
                series_description="Synthetic T1 hippocampus crop",
                series_number=1,
                instance_number=k + 1,
            )
            ds.BodyPartExamined = "BRAIN"
            ds.PatientPosition = "HFS"
            # Frame of Reference
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            # Image Plane
            z = origin[2] + k * spacing[0]
            ds.ImagePositionPatient = [origin[0], origin[1], round(z, 4)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [spacing[1], spacing[2]]
            ds.SliceThickness = spacing[0]
            ds.SpacingBetweenSlices = spacing[0]
            ds.SliceLocation = round(z, 4)
            # MR Image
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = 8.0
            ds.EchoTime = 3.5
            ds.EchoTrainLength = 1
            ds.FlipAngle = 8
            ds.MagneticFieldStrength = 3
            ds.ImagedNucleus = "1H"
            ds.AcquisitionNumber = 1
            ds.WindowCenter, ds.WindowWidth = window
            _set_pixels(ds, pixels[k])
            datasets.append(ds)
        out.append(SyntheticSeries(datasets=datasets, label_volume=labels, spacing=spacing,
                                   patient_id=patient_id, origin=origin, image_volume=pixels))
    return out

