"""docker-compose.yml, checked without Docker: no Docker engine runs on the developers' machines or in CI,
so a mistake in the file would otherwise surface only at a hotline's first ``docker compose up``.

Two checks:

1. The file matches the Compose Specification. Compose interpolates the file first (``${VAR}``,
   ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``, ``$$``), casts the
   strings of known numeric and boolean fields (``replicas: ${PAINLINE_WORKERS:-2}`` becomes the integer 2),
   and validates that document against the specification's JSON schema. This test does the same, with dummy
   values for the required variables, against ``tests/data/compose-spec.json``: the schema Docker Compose
   v2.40.3 validates with (source and licence in ``tests/data/README.md``).
2. Its variables are painline's. Every environment variable passed into a painline container is a setting
   painline reads (:func:`painline.config.env_names`), and every variable the file interpolates is described
   in its comment header, which README.md sends operators to: the compose-only knobs (``PAINLINE_WORKERS``,
   ``POSTGRES_PASSWORD``, ...) as well as the settings.

The YAML's scalars are read as Compose's parser reads them: PyYAML alone reads YAML 1.1, where ``on`` is a
boolean and ``1:30`` a base-60 number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import ValidationError, best_match

from painline.config import env_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "compose-spec.json"

# what an operator must set (the file's `${VAR:?...}`); any value will do for the schema
REQUIRED = {
    "POSTGRES_PASSWORD": "dummy-password",
    "PAINLINE_PUBLIC_URL": "https://painline.example.org",
    "TWILIO_AUTH_TOKEN": "dummy-token",
    "PAINLINE_HMAC_KEY": "dummy-hmac-key",
    "PAINLINE_SECRET_KEY": "dummy-secret-key",
    "PAINLINE_DATA_KEYS": "dummy-data-key",
}

# Containers that do not run painline read their image's own variables: the ones their image documents.
IMAGE_ENVIRONMENT = {
    "postgres": frozenset(
        {
            "POSTGRES_PASSWORD",
            "POSTGRES_USER",
            "POSTGRES_DB",
            "POSTGRES_INITDB_ARGS",
            "POSTGRES_INITDB_WALDIR",
            "POSTGRES_HOST_AUTH_METHOD",
            "PGDATA",
        }
    ),
    "redis": frozenset(),
}


# ---------------------------------------------------------------------------------------------------
# reading YAML as Compose does


class _ComposeYamlLoader(yaml.SafeLoader):
    """SafeLoader reading scalars as Compose's YAML parser does (checked against `docker compose config`)."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, digits = (-1 if text.startswith("-") else 1), text.lstrip("+-")
    if digits[:2] in ("0b", "0o", "0x"):
        return sign * int(digits, 0)
    if len(digits) > 1 and digits.startswith("0") and set(digits) <= set("01234567"):
        return sign * int(digits, 8)  # 0755 is octal, but 09 is nine
    return sign * int(digits)


# Only true/false are booleans (`yes`, `on` stay strings); no base-60 numbers (`1:30` stays a string);
# 1e3 is a number. Timestamps keep PyYAML's reading: Compose reads them as dates too, and then rejects them.
_ComposeYamlLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _firsts in (
    ("tag:yaml.org,2002:bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("tag:yaml.org,2002:int", r"[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"[-+]?(?:\.[0-9_]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
):
    _ComposeYamlLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list(_firsts))
_ComposeYamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(text: str) -> dict[str, object]:
    document = yaml.load(text, Loader=_ComposeYamlLoader)
    assert isinstance(document, dict), "docker-compose.yml: the top level must be a mapping"
    return document


@cache
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


def compose_document() -> dict[str, object]:
    """The file as written, anchors, aliases and `<<` merges resolved (aliased blocks are shared objects)."""
    return load_yaml(compose_text())


# ---------------------------------------------------------------------------------------------------
# interpolation as Compose does it


class InterpolationError(ValueError):
    """What stops `docker compose`: a required variable without a value, a malformed `${...}`, a failed cast."""


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` that closes the `${` opened just before ``start`` (nested `${...}` count), or -1."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _braced(expression: str, env: Mapping[str, str]) -> str:
    """The value of one `${expression}`."""
    match = _BRACED.fullmatch(expression)
    if match is None:
        raise InterpolationError(f"invalid interpolation format: ${{{expression}}}")
    name, op, arg = match["name"], match["op"], match["arg"] or ""
    value = env.get(name)
    given = bool(value) if op is not None and op.startswith(":") else value is not None
    if op in (":-", "-"):
        return value if given and value is not None else substitute(arg, env)
    if op in (":?", "?"):
        if not given:
            raise InterpolationError(f"required variable {name} is missing a value" + (f": {arg}" if arg else ""))
        return value or ""
    if op in (":+", "+"):
        return substitute(arg, env) if given else ""
    return value or ""  # an unset ${VAR} is blank (compose warns)


def substitute(text: str, env: Mapping[str, str]) -> str:
    """``text`` with its variables replaced as `docker compose` replaces them.

    ``$$`` is a literal ``$``; ``$VAR`` and ``${VAR}`` are the value or blank; ``${VAR:-x}`` / ``${VAR-x}``
    give ``x`` when VAR is unset or empty / unset; ``${VAR:?msg}`` / ``${VAR?msg}`` fail likewise;
    ``${VAR:+x}`` / ``${VAR+x}`` give ``x`` only when VAR is set and non-empty / set. Defaults may hold
    further ``${...}``. A ``$`` followed by anything else is kept as it is.
    """
    out: list[str] = []
    i = 0
    while (dollar := text.find("$", i)) >= 0:
        out.append(text[i:dollar])
        following = text[dollar + 1 : dollar + 2]
        if following == "$":
            out.append("$")
            i = dollar + 2
        elif following == "{":
            end = _closing_brace(text, dollar + 2)
            if end < 0:
                raise InterpolationError(f"invalid interpolation format: {text[dollar:]}")
            out.append(_braced(text[dollar + 2 : end], env))
            i = end + 1
        elif match := _NAME.match(text, dollar + 1):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            out.append("$")
            i = dollar + 1
    out.append(text[i:])
    return "".join(out)


def _to_int(value: str) -> int:
    if not re.fullmatch(r"[-+]?[0-9]+", value):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


def _to_bool(value: str) -> bool:
    # compose accepts the YAML 1.1 spellings here too, with a warning
    if value.lower() in {"true", "y", "yes", "on"}:
        return True
    if value.lower() in {"false", "n", "no", "off"}:
        return False
    raise ValueError(f"{value!r} is not a boolean")


# The fields whose interpolated strings compose casts before validating (compose-go v2's loader; `*` is
# any key, `[]` any list item). Other fields the schema types as numbers accept strings too.
_SERVICE_CASTS: dict[Callable[[str], object], tuple[str, ...]] = {
    _to_int: (
        "configs.[].mode",
        "cpu_count",
        "cpu_period",
        "cpu_quota",
        "cpu_rt_period",
        "cpu_rt_runtime",
        "cpu_shares",
        "deploy.replicas",
        "deploy.update_config.parallelism",
        "deploy.rollback_config.parallelism",
        "deploy.restart_policy.max_attempts",
        "deploy.placement.max_replicas_per_node",
        "healthcheck.retries",
        "oom_score_adj",
        "pids_limit",
        "ports.[].target",
        "scale",
        "secrets.[].mode",
        "ulimits.*",
        "ulimits.*.hard",
        "ulimits.*.soft",
    ),
    float: (
        "cpu_percent",
        "cpus",
        "deploy.update_config.max_failure_ratio",
        "deploy.rollback_config.max_failure_ratio",
    ),
    _to_bool: (
        "init",
        "healthcheck.disable",
        "oom_kill_disable",
        "privileged",
        "read_only",
        "stdin_open",
        "tty",
        "volumes.[].read_only",
        "volumes.[].volume.nocopy",
    ),
}
_TOP_LEVEL_CASTS: dict[Callable[[str], object], tuple[str, ...]] = {
    _to_bool: (
        "networks.*.external",
        "networks.*.internal",
        "networks.*.attachable",
        "networks.*.enable_ipv6",
        "volumes.*.external",
        "secrets.*.external",
        "configs.*.external",
    ),
}
CASTS: dict[tuple[str, ...], Callable[[str], object]] = {
    **{("services", "*", *field.split(".")): cast for cast, fields in _SERVICE_CASTS.items() for field in fields},
    **{tuple(field.split(".")): cast for cast, fields in _TOP_LEVEL_CASTS.items() for field in fields},
}


def _cast_for(path: tuple[str | int, ...]) -> Callable[[str], object] | None:
    for pattern, cast in CASTS.items():
        if len(pattern) == len(path) and all(
            (isinstance(part, int) and want == "[]") or (isinstance(part, str) and want in ("*", part))
            for want, part in zip(pattern, path, strict=True)
        ):
            return cast
    return None


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)


def interpolate(node: object, env: Mapping[str, str], path: tuple[str | int, ...] = ()) -> object:
    """A copy of the document with every string value (keys stay as written) interpolated and cast."""
    if isinstance(node, dict):
        return {key: interpolate(value, env, (*path, str(key))) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env, (*path, index)) for index, item in enumerate(node)]
    if not isinstance(node, str):
        return node
    try:
        value = substitute(node, env)
    except InterpolationError as exc:
        raise InterpolationError(f"error while interpolating {_dotted(path)}: {exc}") from None
    cast = _cast_for(path)
    if cast is None:
        return value
    try:
        return cast(value)
    except ValueError as exc:
        raise InterpolationError(f"{_dotted(path)}: failed to cast to expected type: {exc}") from None


_REFERENCE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def variables_in(node: object) -> set[str]:
    """Every variable the document's string values refer to, in any branch (defaults included)."""
    if isinstance(node, dict):
        return set().union(*(variables_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(variables_in(item) for item in node))
    if isinstance(node, str):
        return set(_REFERENCE.findall(node.replace("$$", "")))
    return set()


# ---------------------------------------------------------------------------------------------------
# what the file passes into containers and what its header describes


def environment_keys(block: object) -> list[str]:
    """The variable names of an `environment:` mapping or list (`KEY=value` or a bare `KEY`)."""
    if isinstance(block, dict):
        return [str(key) for key in block]
    if isinstance(block, list):
        return [str(item).split("=", 1)[0] for item in block]
    return []


def _environments_within(node: object, path: tuple[str, ...]) -> Iterator[tuple[str, object]]:
    """(where, block) for every `environment:` mapping or list under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "environment" and isinstance(value, dict | list):
                yield _dotted((*path, key)), value
            else:
                yield from _environments_within(value, (*path, str(key)))


def runs_painline(service: Mapping[str, object]) -> bool:
    """A service built from this repository (or running its image) runs painline."""
    return "build" in service or str(service.get("image", "")).split(":", 1)[0] == "painline"


def services(document: Mapping[str, object]) -> dict[str, dict[str, object]]:
    found = document.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml defines no services"
    return found


def painline_environment(document: Mapping[str, object]) -> set[str]:
    """The variables passed into any painline container."""
    return {
        key
        for service in services(document).values()
        if runs_painline(service)
        for key in environment_keys(service.get("environment"))
    }


def header_comment(text: str) -> str:
    """The comment block at the top of the file (up to the first line that is neither comment nor blank)."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


# ---------------------------------------------------------------------------------------------------
# the schema


@cache
def schema_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(document: object) -> list[str]:
    """One line per schema violation: where in the document, what, and which schema rule."""
    lines = []
    errors: list[ValidationError] = sorted(schema_validator().iter_errors(document), key=lambda e: list(e.path))
    for error in errors:
        rule = "/".join(str(part) for part in error.absolute_schema_path)  # keywords followed, $refs resolved
        line = f"{error.json_path}: {error.message} (schema rule {rule})"
        closest = best_match(error.context) if error.context else None
        if closest is not None:
            line += f"; closest: {closest.json_path}: {closest.message}"
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # each checked against `docker compose config` (v2.40.3) with SET=val, EMPTY= and UNSET unset
        ("${SET}", "val"),
        ("${UNSET}", ""),
        ("$SET-tail", "val-tail"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${UNSET-dflt}", "dflt"),
        ("${SET:-dflt}", "val"),
        ("${UNSET:-}", ""),
        ("${UNSET:-a:-b}", "a:-b"),
        ("${UNSET:-${SET:-x}y}", "valy"),
        ("${UNSET-${EMPTY:-z}}", "z"),
        ("${SET:-a}}", "val}"),
        ("${EMPTY?must}", ""),
        ("${SET:?must}", "val"),
        ("${SET:+rep}", "rep"),
        ("${EMPTY:+rep}", ""),
        ("${EMPTY+rep}", "rep"),
        ("${UNSET+rep}", ""),
        ("$$SET", "$SET"),
        ("$$$SET", "$val"),
        ("$${SET}", "${SET}"),
        ("${UNSET:-$$}", "$"),
        ("a $ b", "a $ b"),
        ("$1 end$", "$1 end$"),
    ],
)
def test_interpolation_follows_compose(template: str, expected: str) -> None:
    assert substitute(template, {"SET": "val", "EMPTY": ""}) == expected


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("${UNSET:?set UNSET}", "required variable UNSET is missing a value: set UNSET"),
        ("${EMPTY:?}", "required variable EMPTY is missing a value"),
        ("${UNSET?}", "required variable UNSET is missing a value"),
        ("${}", "invalid interpolation format"),
        ("${A:x}", "invalid interpolation format"),
        ("${A.B}", "invalid interpolation format"),
        ("${1A}", "invalid interpolation format"),
        ("${A", "invalid interpolation format"),
        ("${UNSET:-${SET}", "invalid interpolation format"),
    ],
)
def test_interpolation_errors_follow_compose(template: str, error: str) -> None:
    with pytest.raises(InterpolationError, match=re.escape(error)):
        substitute(template, {"SET": "val", "EMPTY": ""})


def test_yaml_is_read_as_compose_reads_it() -> None:
    # each checked against `docker compose config` (v2.40.3)
    document = load_yaml(
        "a: yes\nb: on\nc: 1:30\nd: 0o17\ne: 0755\nf: 09\ng: -0755\nh: 0b101\ni: 1_000\n"
        "j: 1e3\nk: .5\nl: True\nm: ~\nn: 8000\n"
    )
    assert document == {
        "a": "yes",
        "b": "on",
        "c": "1:30",
        "d": 15,
        "e": 493,
        "f": 9,
        "g": -493,
        "h": 5,
        "i": 1000,
        "j": 1000.0,
        "k": 0.5,
        "l": True,
        "m": None,
        "n": 8000,
    }


def test_dates_are_rejected_as_compose_rejects_them() -> None:
    """Compose reads an unquoted 2024-01-01 as a date, which no compose field takes: quote it."""
    document = load_yaml("services:\n  a:\n    image: busybox\n    environment:\n      SINCE: 2024-01-01\n")
    assert any(line.startswith("$.services.a.environment") for line in schema_errors(document))


def test_variables_in_finds_every_branch() -> None:
    assert variables_in({"x": ["${A:-${B}} $$C $$$D $E", {"k": "${F:?msg}"}], "y": 3}) == {"A", "B", "D", "E", "F"}


def test_compose_file_matches_the_compose_specification() -> None:
    document = interpolate(compose_document(), REQUIRED)
    errors = schema_errors(document)
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)


def test_schema_check_names_what_is_wrong() -> None:
    """The check is not vacuous: a misspelt key and a wrong type are reported with their paths."""
    document = interpolate(compose_document(), REQUIRED)  # a fresh copy
    assert isinstance(document, dict)
    document["services"]["web"]["restrat"] = "always"
    document["services"]["worker"]["stop_grace_period"] = 60
    errors = "\n".join(schema_errors(document))
    assert "$.services.web: 'restrat' does not match any of the regexes" in errors, errors
    assert "$.services.worker.stop_grace_period: 60 is not of type 'string'" in errors, errors


def test_numeric_fields_are_cast_like_compose() -> None:
    def replicas(env: Mapping[str, str]) -> object:
        document = interpolate(compose_document(), env)
        assert isinstance(document, dict)
        return document["services"]["worker"]["deploy"]["replicas"]

    assert replicas(REQUIRED) == 2
    assert replicas({**REQUIRED, "PAINLINE_WORKERS": "4"}) == 4
    with pytest.raises(InterpolationError, match=r"services\.worker\.deploy\.replicas: failed to cast"):
        replicas({**REQUIRED, "PAINLINE_WORKERS": "four"})


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_variables_stop_compose(name: str) -> None:
    env = {key: value for key, value in REQUIRED.items() if key != name}
    with pytest.raises(InterpolationError, match=rf"required variable {name} is missing a value"):
        interpolate(compose_document(), env)


def test_container_environment_is_what_the_containers_read() -> None:
    """Every variable passed into a painline container is a painline setting; other containers' variables
    are ones their image documents. `environment:` blocks inside `x-` templates count even if unused."""
    document = compose_document()
    settings = set(env_names())
    problems = []
    for name, service in services(document).items():
        keys = environment_keys(service.get("environment"))
        if runs_painline(service):
            problems += [
                f"services.{name}.environment.{key}: painline reads no such setting "
                "(painline.config.env_names()); remove it, or add the setting to painline.config.Settings"
                for key in keys
                if key not in settings
            ]
            continue
        image = str(service.get("image", "")).split(":", 1)[0]
        known = IMAGE_ENVIRONMENT.get(image)
        if known is None:
            problems += [
                f"services.{name}.environment.{key}: image {image!r} is unknown to this test; add the "
                "variables its documentation lists to IMAGE_ENVIRONMENT"
                for key in keys
            ]
        else:
            problems += [
                f"services.{name}.environment.{key}: not a variable the {image!r} image documents"
                for key in keys
                if key not in known
            ]
    for key, value in document.items():
        if str(key).startswith("x-"):
            for where, block in _environments_within(value, (str(key),)):
                problems += [
                    f"{where}.{name}: painline reads no such setting (painline.config.env_names()); "
                    "remove it, or add the setting to painline.config.Settings"
                    for name in environment_keys(block)
                    if name not in settings
                ]
    assert not problems, "docker-compose.yml passes variables nothing reads:\n" + "\n".join(sorted(set(problems)))


def test_compose_only_variables_are_described_in_the_header() -> None:
    document = compose_document()
    knobs = variables_in(document) - painline_environment(document)
    header = header_comment(compose_text())
    missing = sorted(name for name in knobs if not mentions(header, name))
    assert not missing, "\n".join(
        f"{name}: used in ${{...}} in docker-compose.yml but not described in its comment header" for name in missing
    )


def test_interpolated_settings_are_described_in_the_header() -> None:
    """README.md: every variable of docker-compose.yml is described at its top, the settings it passes too."""
    document = compose_document()
    passed = variables_in(document) & painline_environment(document)
    header = header_comment(compose_text())
    missing = sorted(name for name in passed if not mentions(header, name))
    assert not missing, "\n".join(
        f"{name}: set from ${{{name}...}} in docker-compose.yml but not described in its comment header"
        for name in missing
    )
