"""Enrolling a caller by number: ``painline baseline enrol --phone`` keys the patient as a call from it is keyed.

The bug this guards against: enrolling ``+15550002222`` as a patient *reference* created ``ref:+15550002222``,
while a later call from that number (no ``patient_ref``) was keyed ``hmac:...``, another patient, so
the baseline was never used and nothing said so. Here the enrolment runs as an operator runs it
(``painline.cli.main`` against the test PostgreSQL and Redis), the call comes in as a signed Twilio
webhook through the real app factory, and the admin pages and the JSON API are read as an admin.
Throughout, the number must not appear in any spelling in the command's output, the logs, the
audit trail, the patients table or the pages.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from dashboard.formatting import KEY_KIND_LABELS
from dashboard.openapi import openapi_document
from painline import cli
from painline.app import settings_of
from painline.config import Settings
from schema.db import session_scope
from schema.identity import PatientKeyKind, caller_key, looks_like_phone_number, mask_number, patient_ref_key
from schema.models import AuditEvent, Call, Patient
from tests.app_fixtures import AUTH_TOKEN, HMAC_KEY, wav_file
from tests.cli_env import clear_settings_env, point_env_at
from tests.dashboard_fixtures import DashUsers, bearer, login
from tests.telephony_fixtures import new_sid, sign
from tests.worker_fixtures import calm

NUMBER = "+15550002222"
TYPED = "+1 (555) 000-2222"  # how an operator may type it; the webhook gets Twilio's E.164 form
DIGITS = "5550002222"
MASKED = "+1555*****22"
# the number with optional separators between digits, and the "+" in any encoding
_SPELLINGS = re.compile(r"(?:\+|%2b|00)?1?[\s().\-]*" + r"[\s().\-/]*".join(DIGITS), re.IGNORECASE)
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def leaks(text: str) -> bool:
    return bool(_SPELLINGS.search(text))


@pytest.fixture
def enrol_env(monkeypatch: pytest.MonkeyPatch, app_settings: Settings, pain_model_path: Path) -> pytest.MonkeyPatch:
    """The environment of an operator's shell on a deployment: the app's database, Redis, queue and HMAC key."""
    clear_settings_env(monkeypatch)
    point_env_at(monkeypatch, app_settings, pain_model_path)
    return monkeypatch


@pytest.fixture
def clips(tmp_path: Path) -> list[str]:
    return [str(wav_file(tmp_path / f"normal{i}.wav", calm(120.0, seed=i, seconds=3.0))) for i in range(2)]


def post_voice_webhook(app: Flask, from_number: str) -> str:
    """A signed ``POST /twilio/voice`` as Twilio sends it for an inbound call, without ``patient_ref``."""
    call_sid = new_sid("CA")
    form = {
        "CallSid": call_sid,
        "AccountSid": new_sid("AC"),
        "From": from_number,
        "To": "+14155550100",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    public = settings_of(app).public_url + "/twilio/voice"  # what Twilio signs
    response = app.test_client().post(
        "/twilio/voice", data=form, headers={"X-Twilio-Signature": sign(public, form, AUTH_TOKEN)}
    )
    assert response.status_code == 200
    assert "<Stream" in response.get_data(as_text=True)  # a stream was started: the patient was keyed
    return call_sid


def patients(app: Flask) -> list[Patient]:
    with session_scope(app.extensions["painline.sessions"]) as s:
        rows = list(s.scalars(select(Patient).order_by(Patient.id)))
        s.expunge_all()
        return rows


def audit_text(app: Flask) -> str:
    with session_scope(app.extensions["painline.sessions"]) as s:
        events = s.scalars(select(AuditEvent)).all()
        return "\n".join(f"{e.actor} {e.action} {e.object_type} {e.object_id} {e.detail}" for e in events)


# ---------------------------------------------------------------------------------------------------
# --phone: the same patient as the call


def test_enrolled_by_phone_then_called_from_that_number_is_one_patient(
    enrol_env: pytest.MonkeyPatch,
    painline_app: Flask,
    clips: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    code = cli.main(["baseline", "enrol", "--phone", TYPED, *clips, "--no-speaker", "--actor", "nurse.jo"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "2 clip(s) enrolled" in out and MASKED in out
    assert "looks like a phone number" not in err

    (enrolled,) = patients(painline_app)
    assert enrolled.key == caller_key(NUMBER, HMAC_KEY.encode("utf-8"))  # the webhook's own derivation

    call_sid = post_voice_webhook(painline_app, NUMBER)
    with session_scope(painline_app.extensions["painline.sessions"]) as s:
        call = s.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        assert call.patient_id == enrolled.id
        assert len(s.scalars(select(Patient)).all()) == 1  # no second patient for the call

    audit = audit_text(painline_app)
    assert "patient.create" in audit and "caller_number" in audit
    everything = "\n".join([out, err, caplog.text, audit, *(p.key for p in patients(painline_app))])
    assert not leaks(everything)


def test_phone_enrolment_reaches_a_patient_a_call_already_created(
    enrol_env: pytest.MonkeyPatch,
    painline_app: Flask,
    clips: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_sid = post_voice_webhook(painline_app, NUMBER)
    assert cli.main(["baseline", "enrol", "--phone", NUMBER, clips[0], "--no-speaker"]) == 0
    (patient,) = patients(painline_app)
    with session_scope(painline_app.extensions["painline.sessions"]) as s:
        assert s.scalars(select(Call.patient_id).where(Call.call_sid == call_sid)).one() == patient.id
    assert not leaks(capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------------
# a reference that is really a number; argument errors


def test_a_phone_shaped_reference_warns_and_still_enrols(
    enrol_env: pytest.MonkeyPatch,
    painline_app: Flask,
    clips: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["baseline", "enrol", NUMBER, clips[0], "--no-speaker"]) == 0
    out, err = capsys.readouterr()
    assert "looks like a phone number" in err and "would not use this baseline" in err and "--phone" in err
    assert len(err.strip().splitlines()) == 1
    assert not leaks(out + err)  # the warning does not echo it
    (patient,) = patients(painline_app)
    assert patient.key == patient_ref_key(NUMBER)  # enrolled as asked

    # an ordinary reference enrols without the warning
    assert cli.main(["baseline", "enrol", "HOSP-0042", clips[0], "--no-speaker"]) == 0
    assert "phone number" not in capsys.readouterr().err


@pytest.mark.parametrize("text", [NUMBER, TYPED, "555-000-2222", "(555) 000 2222", "00 44 20 7946 0000"])
def test_phone_shapes_are_recognised(text: str) -> None:
    assert looks_like_phone_number(text)


@pytest.mark.parametrize("text", ["HOSP-0042", "0042", "PT-5550002222", "2024-01", "caller 7"])
def test_references_are_not_taken_for_numbers(text: str) -> None:
    assert not looks_like_phone_number(text)


def test_the_mask_hides_the_middle_digits() -> None:
    assert mask_number(TYPED) == MASKED
    assert mask_number("+1234567").count("*") >= 4
    with pytest.raises(ValueError, match=r"not an E\.164") as caught:
        mask_number("5550002222")
    assert DIGITS not in str(caught.value)


def test_phone_without_the_hmac_key_is_a_clear_one_line_error(
    enrol_env: pytest.MonkeyPatch,
    painline_app: Flask,
    clips: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    enrol_env.delenv("PAINLINE_HMAC_KEY")
    assert cli.main(["baseline", "enrol", "--phone", NUMBER, *clips, "--no-speaker"]) == 2
    out, err = capsys.readouterr()
    assert "PAINLINE_HMAC_KEY" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not leaks(out + err)
    assert patients(painline_app) == []


def test_reference_and_phone_are_mutually_exclusive_and_one_is_required(
    enrol_env: pytest.MonkeyPatch,
    painline_app: Flask,
    clips: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["baseline", "enrol", "--phone", NUMBER, "HOSP-0042", *clips, "--no-speaker"]) == 2
    assert "mutually exclusive" in capsys.readouterr().err
    assert cli.main(["baseline", "enrol", clips[0], "--no-speaker"]) == 2  # a reference alone, or audio alone
    assert "PATIENT_REF (or --phone NUMBER)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["baseline", "enrol", "--no-speaker"])
    assert exited.value.code == 2
    capsys.readouterr()
    assert cli.main(["baseline", "enrol", "--phone", "5550002222", *clips, "--no-speaker"]) == 2
    err = capsys.readouterr().err
    assert "E.164" in err and not leaks(err)
    assert patients(painline_app) == []


# ---------------------------------------------------------------------------------------------------
# the admin pages and the API say which kind of key a patient has


def test_admin_pages_and_api_show_the_key_kind_never_the_key(
    enrol_env: pytest.MonkeyPatch,
    dash_app: Flask,
    dash_users: DashUsers,
    clips: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["baseline", "enrol", "--phone", NUMBER, clips[0], "--no-speaker"]) == 0
    assert cli.main(["baseline", "enrol", "HOSP-0042", clips[1], "--no-speaker"]) == 0
    assert cli.main(["baseline", "enrol", "555 000 2223", clips[1], "--no-speaker"]) == 0  # a mistaken one
    capsys.readouterr()
    by_key = {p.key: p.id for p in patients(dash_app)}
    caller_id = by_key[caller_key(NUMBER, HMAC_KEY)]
    ref_id = by_key[patient_ref_key("HOSP-0042")]
    mistaken_id = by_key[patient_ref_key("555 000 2223")]
    caller_label = KEY_KIND_LABELS[PatientKeyKind.CALLER_NUMBER]
    ref_label = KEY_KIND_LABELS[PatientKeyKind.HOTLINE_REFERENCE]
    assert (caller_label, ref_label) == ("caller number (keyed)", "hotline reference")

    client = dash_app.test_client()
    login(client, DashUsers.name("admin"))
    listing = client.get("/admin/patients").get_data(as_text=True)
    row = re.compile(r'<tr data-patient-id="(\d+)">.*?data-key-kind="([a-z_]*)">([^<]*)</td>', re.DOTALL)
    kinds = {int(pid): (kind, text) for pid, kind, text in row.findall(listing)}
    assert kinds[caller_id] == ("caller_number", caller_label)
    assert kinds[ref_id] == ("hotline_reference", ref_label)
    assert "hmac:" not in listing and not _HEX_DIGEST.search(listing) and not leaks(listing)

    page = client.get(f"/admin/patients/{caller_id}").get_data(as_text=True)
    assert 'id="patient-key-kind" data-key-kind="caller_number"' in page and caller_label in page
    assert 'id="phone-like-reference"' not in page
    assert "hmac:" not in page and not _HEX_DIGEST.search(page) and not leaks(page)
    page = client.get(f"/admin/patients/{ref_id}").get_data(as_text=True)
    assert 'data-key-kind="hotline_reference"' in page and ref_label in page
    assert 'id="phone-like-reference"' not in page
    # a patient enrolled under a number written as a reference: the page says calls will not reach it
    page = client.get(f"/admin/patients/{mistaken_id}").get_data(as_text=True)
    assert 'id="phone-like-reference"' in page and "--phone" in page

    # the JSON API gives the same field, as its OpenAPI description says
    headers = bearer(dash_users.tokens["admin"])
    patients_doc = client.get("/api/v1/patients", headers=headers).json
    assert patients_doc is not None
    rows = patients_doc["patients"]
    assert {r["id"]: r["key_kind"] for r in rows} == {
        caller_id: "caller_number",
        ref_id: "hotline_reference",
        mistaken_id: "hotline_reference",
    }
    schemas = openapi_document()["components"]["schemas"]
    assert set(rows[0]) <= set(schemas["PatientRow"]["properties"]) and "key_kind" in schemas["PatientRow"]["required"]
    kinds_documented = schemas["PatientRow"]["properties"]["key_kind"]["enum"]
    assert {r["key_kind"] for r in rows} <= set(kinds_documented)
    doc = client.get(f"/api/v1/patients/{caller_id}/baseline", headers=headers).json
    assert doc is not None
    assert doc["patient"]["key_kind"] == "caller_number"
    assert set(doc["patient"]) <= set(schemas["PatientBaseline"]["properties"]["patient"]["properties"])
    assert "hmac:" not in str(rows) + str(doc) and not leaks(str(rows) + str(doc))
    assert not leaks(audit_text(dash_app))
