"""The clinician's one-page report of a result, as PDF (matplotlib): who and what was analysed, the findings with
the model's own error on its validation data, key images, the model, and that it is not a diagnosis.

Segmentation: each structure's volume in mm³ with the model's Dice and mean volume error on the split it was
measured on (its test split, as the artifact records), the comparison with a normative range when one is
given (else the report says there is none), and each structure's key slice (its largest cross-section,
:mod:`dicomflow.inference.sections`) with the outline drawn over the image. Classification: the probability of
each finding against the model's threshold. Both: the series analysed and why it was chosen, the input check
("unlike the training data") and its reasons.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset

from dicomflow import __version__
from dicomflow.dicom.structures import Structure
from dicomflow.dicom.thumbnail import display_grey
from dicomflow.inference.sections import key_sections

NOT_A_DIAGNOSIS = ("This report was produced by a machine-learning model. It is not a diagnosis: a qualified "
                   "clinician must review the images and decide.")
PAGE = (8.27, 11.69)  # A4, inches


def _dicom_date(value: object) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else (text or "-")


def _header(source: Dataset, selection: Mapping[str, Any], model: str, version: str | None) -> list[str]:
    patient = str(source.get("PatientName", "") or "-").replace("^", " ").strip()
    return [
        f"Patient: {patient}   ID: {source.get('PatientID', '') or '-'}   "
        f"born: {_dicom_date(source.get('PatientBirthDate'))}   sex: {source.get('PatientSex', '') or '-'}",
        f"Study: {_dicom_date(source.get('StudyDate'))}   accession: {source.get('AccessionNumber', '') or '-'}   "
        f"{source.get('StudyDescription', '') or ''}",
        f"Series analysed: {source.get('SeriesDescription', '') or '-'} ({selection.get('instances', '?')} images, "
        f"{selection.get('modality', '')}), UID {selection.get('seriesInstanceUID', '')}",
        f"Why this series: {selection.get('reason', '-')}",
        f"Model: {model}, version {version or 'unregistered'}",
    ]


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _quality_line(findings: Mapping[str, Any]) -> str:
    quality = findings.get("quality") or {}
    if quality.get("outOfDistribution"):
        return "WARNING: the input is unlike the model's training data: " + "; ".join(quality.get("reasons", []))
    if quality.get("outOfDistribution") is False:
        return "Input check: the series resembles the model's training data."
    return "Input check: the model records no training profile to compare with."


def _volume_rows(findings: Mapping[str, Any], normative: Mapping[str, Any] | None) -> list[list[str]]:
    expected = (findings.get("quality") or {}).get("expected", {}).get("structures", {})
    rows = []
    for name, mm3 in findings["volumesMm3"].items():
        e = expected.get(name) or {}
        dice = f"{e['dice']:.2f}" if isinstance(e.get("dice"), int | float) else "-"
        err = (f"±{e['meanAbsVolumeErrorPct']:.1f} %" if isinstance(e.get("meanAbsVolumeErrorPct"), int | float)
               else "-")
        band = (normative or {}).get(name)
        if band:
            low, high = float(band[0]), float(band[1])
            where = "below" if mm3 < low else "above" if mm3 > high else "within"
            norm = f"{low:.0f}-{high:.0f} ({where})"
        else:
            norm = "none configured"
        rows.append([name, f"{mm3:,.0f}", dice, err, norm])
    return rows


@dataclass
class ReportText:
    """Everything the report says in words, in reading order (what :func:`clinician_report` lays out)."""

    title: str
    header: list[str]
    table_header: list[str]
    rows: list[list[str]]
    quality: str
    warning: bool
    disclaimer: str = NOT_A_DIAGNOSIS


def report_text(source_images: Sequence[Dataset], findings: Mapping[str, Any], task: str, model: str,
                version: str | None, selection: Mapping[str, Any],
                normative: Mapping[str, Any] | None = None) -> ReportText:
    """The report's words: header, the findings table, the input check (see the module docstring)."""
    title = "Automated hippocampal volumetry" if task == "segmentation3d" else "Automated image findings"
    if task == "segmentation3d":
        rows = _volume_rows(findings, normative)
        split = (findings.get("quality") or {}).get("expected", {}).get("split", "held-out")
        header = ["structure", "volume (mm³)", f"Dice ({split})", f"vol. error ({split})", "normative range"]
    else:
        threshold = float(findings.get("threshold", 0.5))
        rows = [[name, f"{p:.2f}", "present" if p >= threshold else "absent"]
                for name, p in findings["probabilities"].items()]
        header = ["finding", "probability", f"at threshold {threshold:.2f}"]
        expected = (findings.get("quality") or {}).get("expected") or {}
        if isinstance(expected.get("meanAuroc"), int | float):
            rows.append(["(model)", f"validation mean AUROC {expected['meanAuroc']:.2f}", ""])
    return ReportText(title, _header(source_images[0], selection, model, version), header, rows,
                      _quality_line(findings), bool((findings.get("quality") or {}).get("outOfDistribution")))


def clinician_report(source_images: Sequence[Dataset], findings: Mapping[str, Any], task: str, model: str,
                     version: str | None, selection: Mapping[str, Any], label: np.ndarray | None = None,
                     structures: Sequence[Structure] = (), normative: Mapping[str, Any] | None = None,
                     extra_images: Sequence[tuple[str, np.ndarray]] = ()) -> bytes:
    """The report as PDF bytes. ``label`` is the segmentation on the grid of ``source_images`` (in their order);
    ``normative`` maps a structure to its (low, high) normal range in mm³ for this patient, when configured;
    ``extra_images`` (caption, grey or RGB array) follow the key images (an occlusion map)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    text = report_text(source_images, findings, task, model, version, selection, normative)
    fig = Figure(figsize=PAGE)
    fig.text(0.06, 0.955, text.title, fontsize=17, weight="bold")
    fig.text(0.06, 0.935, f"dicomflow {__version__} - generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
             fontsize=8, color="0.35")
    y = 0.905
    for line in text.header:
        fig.text(0.06, y, _wrap(line), fontsize=9, va="top")
        y -= 0.022 * (1 + len(line) // 110)
    y -= 0.01
    height = 0.024 * (len(text.rows) + 1)
    ax = fig.add_axes([0.06, y - height, 0.88, height])
    ax.axis("off")
    table = ax.table(cellText=text.rows, colLabels=text.table_header, loc="upper left", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    y -= height + 0.03
    fig.text(0.06, y, _wrap(text.quality), fontsize=9, va="top", color="firebrick" if text.warning else "black")
    y -= 0.05
    panels = _key_images(source_images, label, structures) if task == "segmentation3d" else [
        (source_images[0].get("SeriesDescription", "image") or "image", display_grey(source_images[0]), None)]
    panels += [(caption, image, None) for caption, image in extra_images]
    if panels:
        fig.text(0.06, y, "Key images" + (" (each structure's largest cross-section, outlined)"
                                           if task == "segmentation3d" else ""), fontsize=10, weight="bold")
        size = min(0.28, (y - 0.12) / 1.1)
        for i, (caption, grey, outline) in enumerate(panels[:3]):
            img = fig.add_axes([0.06 + i * 0.30, y - 0.02 - size, 0.28, size])
            img.imshow(grey, cmap="gray", interpolation="nearest")
            if outline is not None:
                img.plot(outline[:, 0] - 0.5, outline[:, 1] - 0.5, color="#d62728", linewidth=1.2)
            img.set_title(caption, fontsize=8)
            img.axis("off")
    fig.text(0.06, 0.05, _wrap(text.disclaimer, 85), fontsize=9, weight="bold", va="bottom")
    out = io.BytesIO()
    fig.savefig(out, format="pdf", metadata={"Title": text.title, "Creator": f"dicomflow {__version__}"})
    return out.getvalue()


def _key_images(source_images: Sequence[Dataset], label: np.ndarray | None,
                structures: Sequence[Structure]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if label is None:
        return []
    spacing = [tuple(ds.PixelSpacing) for ds in source_images]
    sections = key_sections(label, [st.value for st in structures], spacing)
    panels = []
    for st in structures:
        if st.value in sections:
            s = sections[st.value]
            panels.append((f"{st.label}: slice {s.slice_index + 1}, {s.area_mm2:.0f} mm²",
                           display_grey(source_images[s.slice_index]), s.outline))
    return panels
