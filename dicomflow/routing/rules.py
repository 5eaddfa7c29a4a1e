"""Routing rules: which model analyses which series of a new study, from a versioned YAML or JSON file.

.. code-block:: yaml

    version: 1
    rules:
      - name: hippocampus-volumetry
        endpoint: hippocampus            # the endpoint that runs the model (async, or real-time)
        targetModel: hippo-v3.tar.gz     # optional: the artifact, on a multi-model endpoint
        outputs: [json, sr, seg]         # what the container makes (default json, sr)
        match:
          modality: MR                   # one value or a list, case-insensitive
          bodyPart: [BRAIN, HEAD]        # BodyPartExamined, one value or a list (optional)
          seriesDescription: "T1.*"      # a regular expression the WHOLE description must match
          imageType: [ORIGINAL, PRIMARY] # values ImageType must all contain (optional)
          minSlices: 10                  # at least this many instances (optional)

A series may match several rules: each rule's model analyses it. :func:`load_rules` refuses a file with
an error, naming its line and the problem (:class:`RulesError`); nothing is routed by a half-read file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dicomflow.errors import DicomflowError
from dicomflow.inference.request import OUTPUTS

VERSION = 1
_LINE = "__line__"
_ENDPOINT = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_MATCH_KEYS = {"modality", "bodyPart", "seriesDescription", "imageType", "minSlices"}
_RULE_KEYS = {"name", "endpoint", "targetModel", "outputs", "match"}
MAX_RULES = 200


class RulesError(DicomflowError):
    """The rules file is not valid; the message names the line and the problem."""


class _LineLoader(yaml.SafeLoader):
    """Safe YAML (and JSON) that remembers the line of every mapping."""


def _mapping_with_line(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping[_LINE] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_line)


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at in a series (from QIDO-RS and one instance's metadata)."""

    study_uid: str
    series_uid: str
    modality: str = ""
    body_part: str = ""
    description: str = ""
    image_type: tuple[str, ...] = ()
    slices: int = 0
    sop_class: str = ""
    manufacturer: str = ""


@dataclass(frozen=True)
class Rule:
    name: str
    endpoint: str
    outputs: tuple[str, ...]
    target_model: str | None = None
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    description: re.Pattern[str] | None = None
    image_type: tuple[str, ...] = ()
    min_slices: int = 0

    def matches(self, s: SeriesInfo) -> bool:
        if self.modality and s.modality.upper() not in self.modality:
            return False
        if self.body_part and s.body_part.upper() not in self.body_part:
            return False
        if self.description is not None and not self.description.fullmatch(s.description):
            return False
        if self.image_type and not set(self.image_type) <= {v.upper() for v in s.image_type}:
            return False
        return s.slices >= self.min_slices


@dataclass(frozen=True)
class Rules:
    version: int
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def for_series(self, s: SeriesInfo) -> list[Rule]:
        return [r for r in self.rules if r.matches(s)]


def _where(item: Any, fallback: int) -> str:
    return f"line {item.get(_LINE, fallback) if isinstance(item, dict) else fallback}"


def _strings(value: Any, what: str, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise RulesError(f"{where}: {what} must be a text or a non-empty list of texts, got {value!r}")
    return tuple(v.strip().upper() for v in items)


def _rule(item: Any, index: int, line: int) -> Rule:
    where = _where(item, line)
    if not isinstance(item, dict):
        raise RulesError(f"{where}: rule {index + 1} must be a mapping with name, endpoint and match")
    unknown = set(item) - _RULE_KEYS - {_LINE}
    if unknown:
        raise RulesError(f"{where}: rule {index + 1} has unknown key(s) {', '.join(sorted(unknown))}; use "
                         f"{', '.join(sorted(_RULE_KEYS))}")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RulesError(f"{where}: rule {index + 1} needs a name")
    endpoint = item.get("endpoint")
    if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
        raise RulesError(f"{where}: rule {name!r}: endpoint must be an endpoint name (1-63 letters, digits, "
                         f"hyphens), got {endpoint!r}")
    target = item.get("targetModel")
    if target is not None and (not isinstance(target, str) or not target.strip() or ".." in target):
        raise RulesError(f"{where}: rule {name!r}: targetModel must be an artifact's path under the endpoint's "
                         "model prefix")
    outputs = item.get("outputs", ["json", "sr"])
    if not isinstance(outputs, list) or not outputs or not all(o in OUTPUTS for o in outputs):
        raise RulesError(f"{where}: rule {name!r}: outputs must be a list of {', '.join(OUTPUTS)}, got {outputs!r}")
    match = item.get("match")
    mwhere = _where(match, line)
    if not isinstance(match, dict) or not set(match) - {_LINE}:
        raise RulesError(f"{mwhere}: rule {name!r} needs a match with at least one of "
                         f"{', '.join(sorted(_MATCH_KEYS))} (a rule that matches everything routes every series)")
    unknown = set(match) - _MATCH_KEYS - {_LINE}
    if unknown:
        raise RulesError(f"{mwhere}: rule {name!r}: unknown match key(s) {', '.join(sorted(unknown))}; use "
                         f"{', '.join(sorted(_MATCH_KEYS))}")
    description = None
    if "seriesDescription" in match:
        pattern = match["seriesDescription"]
        if not isinstance(pattern, str):
            raise RulesError(f"{mwhere}: rule {name!r}: seriesDescription must be a regular expression (text)")
        try:
            description = re.compile(pattern)
        except re.error as exc:
            raise RulesError(f"{mwhere}: rule {name!r}: seriesDescription {pattern!r} is not a regular expression: "
                             f"{exc}") from None
    min_slices = match.get("minSlices", 0)
    if not isinstance(min_slices, int) or isinstance(min_slices, bool) or min_slices < 0:
        raise RulesError(f"{mwhere}: rule {name!r}: minSlices must be a whole number >= 0, got {min_slices!r}")
    return Rule(
        name=name.strip(), endpoint=endpoint, outputs=tuple(outputs), target_model=target,
        modality=_strings(match["modality"], "modality", mwhere) if "modality" in match else (),
        body_part=_strings(match["bodyPart"], "bodyPart", mwhere) if "bodyPart" in match else (),
        description=description,
        image_type=_strings(match["imageType"], "imageType", mwhere) if "imageType" in match else (),
        min_slices=min_slices)


def parse_rules(text: str, source: str = "the rules") -> Rules:
    """Rules from YAML or JSON text; :class:`RulesError` names the line of the first problem."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise RulesError(f"{source}, {where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with version and rules")
    if data.get("version") != VERSION:
        raise RulesError(f"{source}, line {data.get(_LINE, 1)}: version must be {VERSION}, got "
                         f"{data.get('version')!r}")
    items = data.get("rules")
    if not isinstance(items, list) or not items:
        raise RulesError(f"{source}, line {data.get(_LINE, 1)}: rules must be a non-empty list")
    if len(items) > MAX_RULES:
        raise RulesError(f"{source}: {len(items)} rules; at most {MAX_RULES}")
    try:
        rules = tuple(_rule(item, i, data.get(_LINE, 1)) for i, item in enumerate(items))
    except RulesError as exc:
        raise RulesError(f"{source}, {exc}") from None
    names = [r.name for r in rules]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise RulesError(f"{source}: two rules are named {duplicate!r}; names must be unique")
    return Rules(VERSION, rules)


def load_rules(path: str | Path) -> Rules:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesError(f"cannot read the rules file {path}: {exc.strerror}") from None
    return parse_rules(text, str(path))


def describe(rules: Sequence[Rule]) -> list[dict[str, Any]]:
    return [{"name": r.name, "endpoint": r.endpoint, "targetModel": r.target_model, "outputs": list(r.outputs)}
            for r in rules]
