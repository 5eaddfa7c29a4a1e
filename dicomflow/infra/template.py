"""The CloudFormation template as data: loading (short-form tags), parameter checks, intrinsic resolution.

Parameters are checked here, before any API call, against the template's own ``Type``,
``AllowedPattern``, ``AllowedValues``, ``MinLength``/``MaxLength`` and ``MinValue``/``MaxValue``, so a
bad ``--param`` gets one clear line on real AWS and on the emulator alike (moto checks none of them).

:class:`Resolver` evaluates ``Ref``/``Fn::GetAtt``/``Fn::Sub``/``Fn::Join``/``Fn::If`` and conditions
against a deployed stack; the emulator fix-ups use it to apply what moto skipped from the template
itself, so the template stays the one source of truth.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dicomflow.infra.errors import InfraError
from dicomflow.paths import REPO_ROOT

DEFAULT_TEMPLATE = REPO_ROOT / "infrastructure" / "dicomflow.yaml"
NO_VALUE = object()


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns ``!Ref x`` into ``{"Ref": x}`` and ``!Sub ..`` into ``{"Fn::Sub": ..}``."""


def _construct_tag(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if tag_suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """Parse a CloudFormation YAML/JSON template; a clear error if it is missing or malformed."""
    path = Path(path) if path else DEFAULT_TEMPLATE
    try:
        doc = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    except FileNotFoundError as exc:
        raise InfraError(f"template {path} not found; pass --template PATH") from exc
    except yaml.YAMLError as exc:
        raise InfraError(f"template {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(doc, dict) or "Resources" not in doc:
        raise InfraError(f"template {path} has no Resources section; is it a CloudFormation template?")
    return doc


def template_body(path: str | Path | None = None) -> str:
    return (Path(path) if path else DEFAULT_TEMPLATE).read_text()


def parse_param_args(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["K=V", ..]`` -> ``{K: V}``; one clear line for a malformed pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InfraError(f"--param {pair!r} is not KEY=VALUE, e.g. --param PacsDicomwebUrl=https://pacs/dicom-web")
        out[key.strip()] = value
    return out


def validate_parameters(template: Mapping[str, Any], params: Mapping[str, str]) -> dict[str, str]:
    """Check ``params`` against the template's Parameters; return them with defaults filled in.

    Raises :class:`InfraError` naming the first bad parameter and what it must look like.
    """
    specs: dict[str, dict[str, Any]] = template.get("Parameters") or {}
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise InfraError(f"unknown template parameter(s) {', '.join(unknown)}; the template takes: "
                         f"{', '.join(sorted(specs))}")
    resolved: dict[str, str] = {}
    for name, spec in specs.items():
        if name in params:
            value = str(params[name])
        elif "Default" in spec:
            value = str(spec["Default"])
        else:
            raise InfraError(f"template parameter {name} is required ({spec.get('Description', 'no description')}); "
                             f"pass --param {name}=VALUE")
        _check_parameter(name, spec, value)
        resolved[name] = value
    return resolved


def _check_parameter(name: str, spec: Mapping[str, Any], value: str) -> None:
    hint = spec.get("ConstraintDescription")

    def bad(why: str) -> InfraError:
        return InfraError(f"template parameter {name}={value!r} {why}" + (f": {hint}" if hint else ""))

    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            raise bad("is not a number") from None
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise bad(f"is below the minimum {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise bad(f"is above the maximum {spec['MaxValue']}")
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        raise bad(f"is not one of {', '.join(map(str, spec['AllowedValues']))}")
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        raise bad("does not match the allowed pattern")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        raise bad(f"is shorter than {spec['MinLength']} characters")
    if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
        raise bad(f"is longer than {spec['MaxLength']} characters")


GetAtt = Callable[[str, str, str], Any]  # (logical id, physical id, attribute) -> value


class Resolver:
    """Evaluate intrinsic functions against deployed values.

    ``resources`` maps logical IDs to physical IDs (``Ref`` of a resource); ``get_att`` computes
    ``Fn::GetAtt`` from a physical ID; ``pseudo`` holds ``AWS::Region`` and friends.
    """

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str], resources: Mapping[str, str],
                 pseudo: Mapping[str, str], get_att: GetAtt) -> None:
        self.template = template
        self.parameters = dict(parameters)
        self.resources = dict(resources)
        self.pseudo = dict(pseudo)
        self.get_att = get_att
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            spec = (self.template.get("Conditions") or {}).get(name)
            if spec is None:
                raise InfraError(f"template condition {name} is not defined")
            self._conditions[name] = bool(self.resolve(spec))
        return self._conditions[name]

    def active(self, entry: Mapping[str, Any]) -> bool:
        """Whether a resource/output entry's ``Condition`` holds (no condition = always)."""
        cond = entry.get("Condition")
        return True if cond is None else self.condition(cond)

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in self.resources:
            return self.resources[name]
        raise InfraError(f"cannot resolve Ref {name}: not a parameter and not a deployed resource")

    def att(self, logical: str, attribute: str) -> Any:
        if logical not in self.resources:
            raise InfraError(f"cannot resolve GetAtt {logical}.{attribute}: {logical} is not deployed")
        return self.get_att(logical, self.resources[logical], attribute)

    def resolve(self, value: Any) -> Any:  # noqa: C901 - one branch per intrinsic
        if isinstance(value, list):
            return [v for v in (self.resolve(x) for x in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
                return self.att(logical, attribute)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key == "Fn::Join":
                sep, items = arg
                return str(sep).join(str(x) for x in self.resolve(items))
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if key == "Fn::Equals":
                a, b = (self.resolve(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if key == "Condition":
                return self.condition(arg)
            if key.startswith("Fn::"):
                raise InfraError(f"intrinsic {key} is not supported by the emulator fix-ups")
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not NO_VALUE}

    def _sub(self, arg: Any) -> str:
        text, local = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return str(self.att(logical, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", repl, text)
