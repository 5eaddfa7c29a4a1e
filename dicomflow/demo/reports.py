"""Synthetic free-text radiology reports of the synthetic chest studies, written from their known labels,
with the truth of every finding they mention, so that report analysis is measured, not guessed.

Phrasing varies on purpose: three layouts (EXAMINATION / INDICATION / COMPARISON / FINDINGS / IMPRESSION;
FINDINGS only, without an impression; one paragraph without headers), several wordings and sides per
finding, negated findings one by one or in lists ("No pleural effusion or pneumothorax."), uncertain
positives ("Possible small left pleural effusion.", "... cannot be excluded."), pseudo-negations that
assert a finding ("No interval change in the left effusion."), questions in the indication ("Rule out
pneumonia.") and normal studies. Deterministic in the seed, the study and its labels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dicomflow.demo.synthetic import NO_FINDING
from dicomflow.search.reports import NEGATIVE, POSITIVE, UNCERTAIN

#: Findings a normal or abnormal report may say are absent, besides the generator's own classes.
OTHER_NEGATABLE = ("Edema", "Consolidation", "Pneumonia", "Fracture")
_NOUN = {  # the word a list or an uncertain phrase uses
    "Cardiomegaly": "cardiomegaly", "Pleural Effusion": "pleural effusion", "Support Devices": "support devices",
    "Lung Opacity": "focal opacity", "Pneumothorax": "pneumothorax", "Lung Lesion": "pulmonary nodule",
    "Edema": "pulmonary edema", "Consolidation": "focal consolidation", "Pneumonia": "pneumonia",
    "Fracture": "displaced rib fracture",
}
_POSITIVE = {
    "Cardiomegaly": ["The heart is enlarged.", "Cardiomegaly.", "Enlarged cardiac silhouette.",
                     "Moderate cardiomegaly is present.", "The cardiac silhouette is enlarged."],
    "Pleural Effusion": ["Small {side} pleural effusion.", "There is a {side} effusion.",
                         "{Side} pleural effusion with blunting of the costophrenic angle.",
                         "Layering fluid at the {side} lung base.",
                         "No interval change in the small {side} pleural effusion."],
    "Support Devices": ["A cardiac pacemaker is in place with leads in the right heart.",
                        "Support devices are in place.", "Endotracheal tube terminates above the carina.",
                        "An enteric tube courses below the diaphragm.", "A {side} central venous catheter is seen."],
    "Lung Opacity": ["Patchy opacities in the {side} lung.", "There is {side} basilar airspace opacity.",
                     "Hazy opacity in the {side} mid lung zone.", "Ill-defined {side} lower zone opacities."],
    "Pneumothorax": ["Small {side} apical pneumothorax.", "There is a {side} pneumothorax.",
                     "A thin {side} pneumothorax is seen along the lateral chest wall.",
                     "{Side} pneumothorax, new since the comparison."],
    "Lung Lesion": ["A {size} nodule in the {side} upper lobe.", "{Side} lung mass.",
                    "There is a rounded {side} lung nodule.", "A well-circumscribed {size} {side} pulmonary nodule."],
}
_UNCERTAIN = ["Possible {noun}.", "{Noun} cannot be excluded.", "Findings may represent {noun}.",
              "Questionable {side} {noun}.", "Probable small {noun}."]
_NEGATIVE_ONE = ["No {noun}.", "There is no {noun}.", "{Noun} {is} not seen.", "No evidence of {noun}.",
                 "Negative for {noun}."]
_NEGATIVE_LIST = ["No {a} or {b}.", "There is no {a} or {b}.", "No {a}, {b}, or {c}.", "Without {a} or {b}."]
_NORMAL = ["No acute cardiopulmonary abnormality.", "The lungs are clear.", "Heart size is normal.",
           "Normal chest radiograph."]
_INDICATION_PLAIN = ["Cough.", "Shortness of breath.", "Chest pain.", "Preoperative assessment.", "Fever."]
_INDICATION_QUESTION = {"Pneumonia": "Rule out pneumonia.", "Pneumothorax": "Evaluate for pneumothorax.",
                        "Pleural Effusion": "Assess for pleural effusion."}


@dataclass(frozen=True)
class SyntheticReport:
    """A report's text and the truth of what it says: finding -> positive | uncertain | negative."""

    text: str
    mentions: dict[str, str]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def chest_report(labels: list[str], key: str, seed: int = 0) -> SyntheticReport:
    """A report of a chest study with ``labels`` (the study's key makes it deterministic)."""
    rng = random.Random(f"report:{seed}:{key}")  # noqa: S311 - synthetic text, not security
    present = [c for c in labels if c != NO_FINDING]
    mentions: dict[str, str] = {}
    findings: list[str] = []
    for name in present:
        side = rng.choice(["left", "right"])
        if name != "Support Devices" and rng.random() < 0.15:
            sentence = rng.choice(_UNCERTAIN)
            mentions[name] = UNCERTAIN
        else:
            sentence = rng.choice(_POSITIVE[name])
            mentions[name] = POSITIVE
        noun = _NOUN[name] if "{Noun}" in sentence or "{noun}" in sentence else ""
        findings.append(sentence.format(side=side, Side=_cap(side), size=rng.choice(["6 mm", "9 mm", "1.2 cm"]),
                                        noun=noun, Noun=_cap(noun)))
    absent = [n for n in (*_POSITIVE, *OTHER_NEGATABLE) if n not in present]
    negated = rng.sample(absent, k=min(len(absent), rng.randint(1 if present else 2, 4)))
    while negated:
        if len(negated) >= 2 and rng.random() < 0.5:
            template = rng.choice(_NEGATIVE_LIST)
            count = 3 if "{c}" in template and len(negated) >= 3 else 2
            template = template if count == 3 or "{c}" not in template else "No {a} or {b}."
            group, negated = negated[:count], negated[count:]
            findings.append(template.format(**{k: _NOUN[n] for k, n in zip("abc", group, strict=False)}))
        else:
            group, negated = negated[:1], negated[1:]
            noun = _NOUN[group[0]]
            findings.append(rng.choice(_NEGATIVE_ONE).format(noun=noun, Noun=_cap(noun),
                                                             **{"is": "are" if noun.endswith("s") else "is"}))
        for n in group:
            mentions[n] = NEGATIVE
    if not present:
        findings.insert(0, rng.choice(_NORMAL))
    rng.shuffle(findings)
    questions = [q for n, q in _INDICATION_QUESTION.items() if n not in mentions]
    indication = rng.choice(questions) if questions and rng.random() < 0.3 else rng.choice(_INDICATION_PLAIN)
    impression = (" ".join(f for f in findings if not f.startswith(("No ", "There is no", "Negative", "Without")))
                  or "No acute cardiopulmonary process.")
    layout = rng.choice(["full", "findings", "paragraph"])
    body = " ".join(findings)
    if layout == "full":
        text = (f"EXAMINATION: Chest radiograph, PA view.\nINDICATION: {indication}\nCOMPARISON: None.\n"
                f"FINDINGS: {body}\nIMPRESSION: {impression}\n")
    elif layout == "findings":
        text = f"Indication: {indication}\nFindings:\n{body}\n"
    else:
        text = f"PA view of the chest. {body}\n"
    return SyntheticReport(text=text, mentions=mentions)
