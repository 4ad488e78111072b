"""The OpenAPI schemas and the store's records agree, field by field, so the document cannot drift.

The API's answers are the records of :mod:`dashboard.store` serialised by field name
(:func:`dashboard.store.to_json`), while :mod:`dashboard.openapi` is written by hand. Here every
schema of :data:`dashboard.openapi.SCHEMA_RECORDS` is compared with its record: the same names, a
JSON type for each field that the field's Python type serialises to, ``null`` allowed wherever the
field may be None, nested records checked the same way (inline or by ``$ref``), and enum fields'
values all listed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest

from dashboard.openapi import SCHEMA_RECORDS, openapi_document
from dashboard.store import BaselineStatus, QueueRow, to_json

SCHEMAS: dict[str, Any] = openapi_document()["components"]["schemas"]
NOT_RECORDS = {"Error", "Me", "ResolveRequest", "Queue", "Patients"}


def _target(schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The schema a property stands for, following ``$ref`` (and ``oneOf`` [x, null]), and its name."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return name, SCHEMAS[name]
    for option in schema.get("oneOf", []):
        if option.get("type") != "null":
            return _target(option)
    return None, schema


def _json_types(schema: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        return _json_types(_target(schema)[1])
    if "oneOf" in schema:
        return set().union(*(_json_types(option) for option in schema["oneOf"]))
    declared = schema.get("type")
    return {declared} if isinstance(declared, str) else set(declared or ())


def _json_type(tp: Any) -> str:
    if tp is bool:
        return "boolean"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if tp is datetime or (isinstance(tp, type) and issubclass(tp, str)):
        return "string"
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return "object"
    if typing.get_origin(tp) in (list, tuple):
        return "array"
    raise AssertionError(f"no JSON type for {tp!r}")


def _type_problems(tp: Any, schema: dict[str, Any], where: str) -> list[str]:
    args = typing.get_args(tp)
    nullable = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if nullable:
        (tp,) = [a for a in args if a is not type(None)]
    allowed = _json_types(schema)
    expected = _json_type(tp)
    problems = []
    if expected not in allowed:
        problems.append(f"{where}: {tp!r} serialises to {expected}, the schema allows {sorted(allowed)}")
    if nullable and "null" not in allowed:
        problems.append(f"{where}: may be None, the schema does not allow null")
    name, target = _target(schema)
    if tp is datetime and target.get("format") != "date-time":
        problems.append(f"{where}: a datetime, the schema has no date-time format")
    if isinstance(tp, type) and issubclass(tp, Enum):
        missing = {m.value for m in tp} - set(target.get("enum") or [])
        if missing:
            problems.append(f"{where}: enum values {sorted(missing)} not listed")
    if dataclasses.is_dataclass(tp):
        described = SCHEMA_RECORDS.get(name) if name is not None else tp
        if described is tp:
            problems += _record_problems(tp, target, where)  # type: ignore[arg-type]
        elif not _narrows(tp, described, target):  # type: ignore[arg-type]
            problems.append(f"{where}: refers to {name}, which describes {described!r}, not {tp!r}")
    if typing.get_origin(tp) in (list, tuple):
        item = typing.get_args(tp)[0]
        problems += _type_problems(item, target.get("items") or {}, f"{where}[]")
    return problems


def _narrows(record: type, described: type | None, schema: dict[str, Any]) -> bool:
    """Whether ``record`` is ``described`` less some optional fields (``FlagRecord`` for ``Flag``,
    whose ``grow_job`` only the resolve answer has); ``described`` itself is checked on its own."""
    if described is None or not issubclass(described, record):
        return False
    extra = {f.name for f in dataclasses.fields(described)} - {f.name for f in dataclasses.fields(record)}  # type: ignore[arg-type]
    return not extra & set(schema.get("required") or ())


def _record_problems(record: type, schema: dict[str, Any], where: str) -> list[str]:
    hints = typing.get_type_hints(record)
    fields = {f.name for f in dataclasses.fields(record)}
    properties: dict[str, Any] = schema.get("properties") or {}
    named = record.__name__
    problems = [f"{where}.{n}: a field of {named}, not in the schema" for n in sorted(fields - properties.keys())]
    problems += [f"{where}.{n}: in the schema, not a field of {named}" for n in sorted(properties.keys() - fields)]
    problems += [f"{where}.{n}: required, not a field" for n in sorted(set(schema.get("required") or ()) - fields)]
    for name in sorted(fields & properties.keys()):
        problems += _type_problems(hints[name], properties[name], f"{where}.{name}")
    return problems


def test_every_component_schema_is_a_record_or_declared_not_one() -> None:
    assert set(SCHEMAS) == set(SCHEMA_RECORDS) | NOT_RECORDS
    assert not set(SCHEMA_RECORDS) & NOT_RECORDS


@pytest.mark.parametrize("name", sorted(SCHEMA_RECORDS))
def test_schema_matches_its_record(name: str) -> None:
    assert _record_problems(SCHEMA_RECORDS[name], SCHEMAS[name], name) == []


def test_the_envelopes_hold_the_records_listed() -> None:
    assert SCHEMAS["Queue"]["properties"]["rows"]["items"] == {"$ref": "#/components/schemas/QueueRow"}
    assert SCHEMAS["Patients"]["properties"]["patients"]["items"] == {"$ref": "#/components/schemas/PatientRow"}


def test_the_check_catches_a_drift() -> None:
    """A schema missing a field, or refusing a None the record may hold, is reported."""
    schema = {**SCHEMAS["BaselineStatus"], "properties": dict(SCHEMAS["BaselineStatus"]["properties"])}
    del schema["properties"]["n_calls"]
    schema["properties"]["extra"] = {"type": "string"}
    problems = _record_problems(BaselineStatus, schema, "BaselineStatus")
    assert any(".n_calls" in p for p in problems) and any(".extra" in p for p in problems)
    row = {**SCHEMAS["QueueRow"], "properties": {**SCHEMAS["QueueRow"]["properties"], "severity": {"type": "number"}}}
    assert any("may be None" in p for p in _record_problems(QueueRow, row, "QueueRow"))


def test_to_json_serialises_records_by_field_name() -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    status = BaselineStatus(baseline_id=3, n_utterances=4, n_calls=2, updated_at=at, model_version="m1")
    assert to_json({"rows": [status], "ids": (1, 2)}) == {
        "rows": [
            {
                "baseline_id": 3,
                "n_utterances": 4,
                "n_calls": 2,
                "updated_at": "2024-05-01T12:00:00+00:00",
                "model_version": "m1",
            }
        ],
        "ids": [1, 2],
    }
