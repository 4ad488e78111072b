"""The nurse and admin pages on the real app, PostgreSQL and Redis, through Flask's test client."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest
import soundfile as sf
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue
from sqlalchemy import select

from dashboard import admin as admin_pages
from schema.audit import record
from schema.contract import enrol_upload_key
from schema.db import session_scope
from schema.models import Baseline, BaselineContribution, Call, Flag, FlagStatus, Score, Utterance, utcnow
from tests.dashboard.pages import QueueSeed, audit_actions, form_csrf, make_flagged_call, moved, queue_order
from tests.dashboard_fixtures import DashUsers, Seed

ClientAs = Callable[[str], FlaskClient]


def _queue(app: Flask) -> Queue:
    return app.extensions["painline.queue"]


# ---------------------------------------------------------------------------------------------------
# access


@pytest.mark.parametrize("path", ["/", "/queue/rows", "/calls/1", "/admin/patients", "/admin/audit", "/events"])
def test_pages_send_anonymous_visitors_to_sign_in(pages_app: Flask, path: str) -> None:
    response = pages_app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("role", ["nurse", "admin", "auditor"])
def test_queue_and_call_pages_render_for_every_role(client_as: ClientAs, dash_seed: Seed, role: str) -> None:
    client = client_as(role)
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "PT-100" in html and f'data-call-id="{dash_seed.call_id}"' in html
    assert f'data-call-id="{dash_seed.live_call_id}"' in html  # the live, unflagged call
    call = client.get(f"/calls/{dash_seed.call_id}")
    assert call.status_code == 200
    forms = 'class="resolve-form"' in call.get_data(as_text=True)
    assert forms is (role != "auditor")


def test_a_nurse_is_refused_every_admin_page(client_as: ClientAs, dash_seed: Seed) -> None:
    nurse = client_as("nurse")
    for path in ("/admin/patients", f"/admin/patients/{dash_seed.patient_id}", "/admin/audit"):
        assert nurse.get(path).status_code == 403, path
    token = form_csrf(nurse.get("/").get_data(as_text=True))
    refused = nurse.post(f"/admin/contributions/{dash_seed.contribution_ids[0]}/exclude", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "/admin/patients" not in nurse.get("/").get_data(as_text=True)  # not even offered in the menu


def test_an_auditor_reads_admin_pages_without_forms_and_cannot_post(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    auditor = client_as("auditor")
    page = auditor.get(f"/admin/patients/{dash_seed.patient_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/exclude" not in html and "Reset baseline" not in html and 'type="file"' not in html
    assert auditor.get("/admin/audit").status_code == 200
    token = form_csrf(html)  # the sign-out form's token
    response = auditor.post(f"/admin/contributions/{dash_seed.contribution_ids[0]}/exclude", data={"csrf_token": token})
    assert response.status_code == 403
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        assert s.get_one(BaselineContribution, dash_seed.contribution_ids[0]).included is True


def test_layout_is_accessible_and_served_without_a_cdn(client_as: ClientAs, dash_seed: Seed) -> None:
    client = client_as("nurse")
    html = client.get("/").get_data(as_text=True)
    assert 'class="skip-link" href="#main"' in html and '<main id="main"' in html
    assert '<nav aria-label="Main">' in html and 'aria-current="page"' in html
    assert 'role="status"' in html  # the live region the script announces updates in
    assert "<caption>" in html and 'scope="col"' in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    for asset in ("/ui/live.js", "/ui/painline.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.data) > 500, asset


# ---------------------------------------------------------------------------------------------------
# the queue


def test_queue_is_ordered_by_severity_then_recency(client_as: ClientAs, queue_seed: QueueSeed) -> None:
    html = client_as("nurse").get("/queue/rows").get_data(as_text=True)
    order = queue_order(html)
    assert order == [queue_seed.severe_old, queue_seed.mild_new, queue_seed.mild_old, queue_seed.live]
    assert queue_seed.resolved not in order
    assert "<html" not in html  # a fragment, not a page


def test_queue_rows_show_reference_verdict_probability_speech_and_baseline(
    client_as: ClientAs, dash_seed: Seed
) -> None:
    html = client_as("nurse").get("/queue/rows").get_data(as_text=True)
    row = html.split(f'data-call-id="{dash_seed.call_id}"', 1)[1].split("</tr>", 1)[0]
    assert "PT-100" in row and "pain likely" in row and "0.81" in row and "12 s" in row
    assert "2 utterances over 1 call" in row  # the seed's model baseline: enrolment clip + one call utterance
    assert "badge-high" in row


def test_opening_the_queue_is_audited_but_its_live_refresh_is_not(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    client = client_as("nurse")
    client.get("/")
    client.get("/queue/rows")
    client.get("/queue/rows")
    views = audit_actions(pages_app, "queue.view")
    assert [v.actor for v in views] == ["nurse1"]


# ---------------------------------------------------------------------------------------------------
# the call page


def test_call_page_shows_chart_verdict_evidence_and_speaker_check(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    html = client_as("nurse").get(f"/calls/{dash_seed.call_id}").get_data(as_text=True)
    assert html.count('<circle class="utterance') == 3
    assert 'class="threshold"' in html and 'data-threshold="0.6000"' in html
    assert "pain likely" in html and "threshold 0.60" in html
    assert "pitch" in html and "+2.3 semitones" in html
    assert "All 3 checked utterances matched the enrolled voice" in html
    views = audit_actions(pages_app, "call.view")
    assert [(v.actor, v.object_id) for v in views] == [("nurse1", str(dash_seed.call_id))]


def test_call_page_flags_utterances_that_failed_the_speaker_check(pages_app: Flask, client_as: ClientAs) -> None:
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        call_id = make_flagged_call(
            s, ref="SPK", severity=0.8, started_at=utcnow() - timedelta(minutes=3), probabilities=(0.5, 0.9)
        )
        scores = s.scalars(select(Score).join(Utterance).where(Utterance.call_id == call_id)).all()
        scores[0].speaker_similarity = 0.4
        scores[1].speaker_similarity = 0.85
    html = client_as("nurse").get(f"/calls/{call_id}").get_data(as_text=True)
    assert "1 of 2 checked utterances did not match" in html
    assert html.count("other-speaker") == 1  # one hollow point on the chart
    assert "other voice?" in html


def test_missing_call_is_404(client_as: ClientAs) -> None:
    assert client_as("nurse").get("/calls/999999").status_code == 404


def test_resolving_as_no_pain_enqueues_the_grow_baseline_job(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    client = client_as("nurse")
    page = client.get(f"/calls/{dash_seed.call_id}").get_data(as_text=True)
    response = client.post(
        f"/flags/{dash_seed.flag_id}/resolve",
        data={"csrf_token": form_csrf(page), "label": "no_pain", "note": "spoke calmly", "call_id": dash_seed.call_id},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"/calls/{dash_seed.call_id}"
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        flag = s.get_one(Flag, dash_seed.flag_id)
        assert (flag.status, flag.label, flag.note, flag.resolved_by) == (
            "resolved",
            "no_pain",
            "spoke calmly",
            "nurse1",
        )
    job = _queue(pages_app).fetch_job(f"grow-baseline-{dash_seed.call_id}")
    assert job is not None
    assert job.func_name == "worker.jobs.grow_baseline_from_call" and job.args == (dash_seed.call_id,)
    after = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Flag resolved: no pain." in after and 'class="resolve-form"' not in after
    [event] = audit_actions(pages_app, "flag.resolve")
    assert event.detail["label"] == "no_pain" and "spoke calmly" not in str(event.detail)


@pytest.mark.parametrize("label", ["pain_confirmed", "unsure"])
def test_other_labels_do_not_grow_the_baseline(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed, label: str
) -> None:
    client = client_as("nurse")
    token = form_csrf(client.get(f"/calls/{dash_seed.call_id}").get_data(as_text=True))
    response = client.post(f"/flags/{dash_seed.flag_id}/resolve", data={"csrf_token": token, "label": label})
    assert response.status_code == 302
    assert _queue(pages_app).fetch_job(f"grow-baseline-{dash_seed.call_id}") is None


def test_resolve_without_a_csrf_token_or_label_is_refused(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    client = client_as("nurse")
    assert client.post(f"/flags/{dash_seed.flag_id}/resolve", data={"label": "no_pain"}).status_code == 400
    token = form_csrf(client.get(f"/calls/{dash_seed.call_id}").get_data(as_text=True))
    no_label = client.post(
        f"/flags/{dash_seed.flag_id}/resolve", data={"csrf_token": token, "call_id": dash_seed.call_id}
    )
    assert no_label.status_code == 302
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        assert s.get_one(Flag, dash_seed.flag_id).status == FlagStatus.OPEN.value


def test_acknowledge_then_resolve_twice_is_a_polite_refusal(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    client = client_as("nurse")
    token = form_csrf(client.get(f"/calls/{dash_seed.call_id}").get_data(as_text=True))
    assert client.post(f"/flags/{dash_seed.flag_id}/acknowledge", data={"csrf_token": token}).status_code == 302
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        flag = s.get_one(Flag, dash_seed.flag_id)
        assert (flag.status, flag.acknowledged_by) == ("acknowledged", "nurse1")
    assert "acknowledged" in client.get("/queue/rows").get_data(as_text=True)
    data = {"csrf_token": token, "label": "unsure", "call_id": dash_seed.call_id}
    assert client.post(f"/flags/{dash_seed.flag_id}/resolve", data=data).status_code == 302
    again = client.post(f"/flags/{dash_seed.flag_id}/resolve", data=data, follow_redirects=True)
    assert "already resolved" in again.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------------
# admin: patients and baselines


def test_patients_search_finds_by_reference_and_is_audited(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    client = client_as("admin")
    html = client.get("/admin/patients?q=pt-1").get_data(as_text=True)
    assert f'data-patient-id="{dash_seed.patient_id}"' in html
    none = client.get("/admin/patients?q=nobody").get_data(as_text=True)
    assert "No patient found." in none
    searches = audit_actions(pages_app, "patient.search")
    assert len(searches) == 2 and "pt-1" not in str(searches[0].detail)


def test_baseline_page_shows_contributions_measures_plot_and_model(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    html = client_as("admin").get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True)
    for cid in dash_seed.contribution_ids:
        assert f'data-contribution-id="{cid}"' in html
    assert "test-model-1" in html and "2 utterances over 1 call" in html
    assert 'class="chart measures-plot"' in html
    for key in ("pitch", "loudness", "jitter", "shimmer", "hnr"):
        assert f'data-measure="{key}"' in html
    assert html.count('class="patient-dot') >= 5
    views = audit_actions(pages_app, "baseline.view")
    assert [(v.actor, v.object_id) for v in views] == [("admin1", str(dash_seed.patient_id))]


def _run_rebuild(app: Flask, baseline_id: int) -> None:
    """What the enqueued ``worker.jobs.rebuild_baseline`` job does, run here without a worker process."""
    from worker.baselines import rebuild

    with session_scope(app.extensions["painline.sessions"]) as s:
        rebuild(s, baseline_id)


def test_exclude_include_and_reset_change_the_baseline_and_are_audited(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    client = client_as("admin")
    page = client.get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True)
    token = form_csrf(page)
    target = dash_seed.contribution_ids[1]

    response = client.post(f"/admin/contributions/{target}/exclude", data={"csrf_token": token})
    assert response.status_code == 302 and "#contributions" in response.headers["Location"]
    job = _queue(pages_app).fetch_job(f"rebuild-baseline-{dash_seed.baseline_id}")
    assert job is not None and job.func_name == "worker.jobs.rebuild_baseline"
    assert job.args == (dash_seed.baseline_id,)
    stale = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'id="rebuild-pending"' in stale and "1 utterance from enrolment" in stale
    _run_rebuild(pages_app, dash_seed.baseline_id)
    rebuilt = client.get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True)
    assert 'id="rebuild-pending"' not in rebuilt
    assert f'data-contribution-id="{target}" class="excluded"' in rebuilt
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        assert s.get_one(Baseline, dash_seed.baseline_id).count == 1

    client.post(f"/admin/contributions/{target}/include", data={"csrf_token": token})
    _run_rebuild(pages_app, dash_seed.baseline_id)
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        assert s.get_one(Baseline, dash_seed.baseline_id).count == 2

    refused = client.post(f"/admin/patients/{dash_seed.patient_id}/reset", data={"csrf_token": token})
    assert refused.status_code == 302  # without the confirmation box nothing happens
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        assert s.get_one(BaselineContribution, target).included is True
    client.post(f"/admin/patients/{dash_seed.patient_id}/reset", data={"csrf_token": token, "confirm": "yes"})
    _run_rebuild(pages_app, dash_seed.baseline_id)
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        assert s.get_one(Baseline, dash_seed.baseline_id).count == 0
        assert not any(
            s.scalars(
                select(BaselineContribution.included).where(BaselineContribution.baseline_id == dash_seed.baseline_id)
            )
        )
        # the evidence twin follows the model baseline's decisions through the worker's rebuild
        assert s.get_one(Baseline, dash_seed.evidence_baseline_id).count == 0

    assert [e.actor for e in audit_actions(pages_app, "baseline.exclude")] == ["admin1"]
    assert [e.actor for e in audit_actions(pages_app, "baseline.include")] == ["admin1"]
    [reset] = audit_actions(pages_app, "baseline.reset")
    assert reset.actor == "admin1" and reset.object_id == str(dash_seed.patient_id) and reset.detail["excluded"] == 2


def _wav(seconds: float, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_enrol_upload_stores_telephone_audio_in_redis_and_enqueues_the_job(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed, dash_users: DashUsers
) -> None:
    client = client_as("admin")
    token = form_csrf(client.get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True))
    data = {"csrf_token": token, "audio": [(io.BytesIO(_wav(2.0)), "a.wav"), (io.BytesIO(_wav(1.5)), "b.wav")]}
    response = client.post(
        f"/admin/patients/{dash_seed.patient_id}/enrol", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 302
    [event] = audit_actions(pages_app, "baseline.enrol_upload")
    assert event.actor == "admin1" and event.detail["clips"] == 2 and event.detail["seconds"] == pytest.approx(3.5)
    upload_token = event.detail["job_id"].removeprefix("enrol-upload-")
    redis = pages_app.extensions["painline.redis"]
    key = enrol_upload_key(upload_token)
    try:
        clips = redis.lrange(key, 0, -1)
        assert [len(c) for c in clips] == [16000, 12000]  # 8 kHz mu-law, one byte a sample
        assert 0 < redis.ttl(key) <= admin_pages.UPLOAD_TTL_S
        job = _queue(pages_app).fetch_job(event.detail["job_id"])
        assert job is not None
        assert job.func_name == "worker.jobs.enrol_uploaded"
        # the admin's id, not their name: job arguments are stored in Redis and logged by RQ
        assert job.args == (dash_seed.patient_id, upload_token, dash_users.ids["admin"])
    finally:
        redis.delete(key)


def test_enrol_upload_refuses_what_is_not_audio(pages_app: Flask, client_as: ClientAs, dash_seed: Seed) -> None:
    client = client_as("admin")
    token = form_csrf(client.get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True))
    data = {"csrf_token": token, "audio": [(io.BytesIO(b"not audio at all" * 100), "x.wav")]}
    response = client.post(
        f"/admin/patients/{dash_seed.patient_id}/enrol",
        data=data,
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert "Recording 1 refused: not a readable audio file" in response.get_data(as_text=True)
    assert audit_actions(pages_app, "baseline.enrol_upload") == []


def test_audit_page_filters_by_actor_action_type_and_date(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed
) -> None:
    admin = client_as("admin")
    nurse = client_as("nurse")
    nurse.get(f"/calls/{dash_seed.call_id}")
    admin.get(f"/admin/patients/{dash_seed.patient_id}")
    by_action = admin.get("/admin/audit?action=call.view").get_data(as_text=True)
    assert by_action.count('data-action="call.view"') == 1 and 'data-action="baseline.view"' not in by_action
    by_actor = admin.get("/admin/audit?actor=admin1&object_type=patient").get_data(as_text=True)
    assert 'data-action="baseline.view"' in by_actor and 'data-action="call.view"' not in by_actor
    today = utcnow().date()
    future = admin.get(f"/admin/audit?from={today + timedelta(days=1)}").get_data(as_text=True)
    assert "No event matches." in future
    current = admin.get(f"/admin/audit?from={today}&to={today}&action=call.view").get_data(as_text=True)
    assert 'data-action="call.view"' in current
    last = audit_actions(pages_app, "audit.view")[-1].detail["filters"]
    assert last == {"action": "call.view", "since": today.isoformat(), "until": today.isoformat()}


@pytest.mark.parametrize(
    "query",
    [
        "/admin/patients?q=%00",
        "/admin/audit?actor=%00",
        "/admin/audit?object_id=%00",
        "/admin/audit?before=99999999999",
        "/admin/audit?to=9999-12-31",
        "/admin/audit?from=yesterday",
    ],
)
def test_admin_filters_refuse_what_postgresql_cannot_take(client_as: ClientAs, query: str) -> None:
    """A NUL, an id beyond PostgreSQL's integer, a date with no next day or no date at all: 400, not 500
    (and not a filter silently ignored)."""
    response = client_as("admin").get(query)
    assert response.status_code == 400, (query, response.status_code)


def test_admin_audit_still_filters_by_valid_dates(client_as: ClientAs) -> None:
    assert client_as("admin").get("/admin/audit?from=2026-01-01&to=2026-12-31&before=5").status_code == 200


# ---------------------------------------------------------------------------------------------------
# issue 13: enrolment uploads judged by their header, shared filter validation, audit links, pitch


def _flac_bomb() -> bytes:
    """117 KB of FLAC silence claiming 300 s x 8 channels x 48 kHz (~0.9 GB once decoded)."""
    buffer = io.BytesIO()
    block = np.zeros((480_000, 8), dtype=np.int16)
    with sf.SoundFile(buffer, "w", samplerate=48_000, channels=8, format="FLAC", subtype="PCM_16") as out:
        for _ in range(30):
            out.write(block)
    return buffer.getvalue()


def test_enrol_refuses_a_decompression_bomb_from_its_header_without_decoding(
    pages_app: Flask, client_as: ClientAs, dash_seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard import uploads

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an upload was decoded before every header was checked")

    monkeypatch.setattr(uploads, "decode_mono", never)
    monkeypatch.setattr(admin_pages, "load_audio", never, raising=False)  # the decode-first path
    client = client_as("admin")
    token = form_csrf(client.get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True))
    data = {
        "csrf_token": token,
        "audio": [(io.BytesIO(_wav(2.0)), "fine.wav"), (io.BytesIO(_flac_bomb()), "silence.flac")],
    }
    response = client.post(
        f"/admin/patients/{dash_seed.patient_id}/enrol", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Recording 2 refused" in html and "300 s long" in html and "8 channels" in html
    assert "Nothing was enrolled" in html
    assert 'id="enrol-error"' in html and 'aria-invalid="true"' in html  # at the form it concerns
    assert "Baseline of PT-100" in html  # the page itself, with everything else on it
    assert audit_actions(pages_app, "baseline.enrol_upload") == []


def test_enrol_refuses_a_recording_of_unknown_length(pages_app: Flask, client_as: ClientAs, dash_seed: Seed) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(32_000, dtype=np.int16), 16_000, format="FLAC")
    data = bytearray(buffer.getvalue())
    packed = int.from_bytes(data[18:26], "big")
    data[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")  # STREAMINFO total samples: unknown
    client = client_as("admin")
    token = form_csrf(client.get(f"/admin/patients/{dash_seed.patient_id}").get_data(as_text=True))
    response = client.post(
        f"/admin/patients/{dash_seed.patient_id}/enrol",
        content_type="multipart/form-data",
        data={"csrf_token": token, "audio": [(io.BytesIO(bytes(data)), "stream.flac")]},
    )
    assert response.status_code == 400
    assert "does not state its length" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/admin/patients?q=%00", "q"),
        ("/admin/audit?actor=%00", "actor"),
        ("/admin/audit?object_id=%00", "object_id"),
        ("/admin/audit?before=99999999999", "before"),
        ("/admin/audit?before=soon", "before"),
        ("/admin/audit?to=9999-12-31", "to"),
        ("/admin/audit?from=yesterday", "from"),
        ("/admin/audit?from=2026-02-30", "from"),
        ("/admin/audit?actor=" + "a" * 151, "actor"),
    ],
)
def test_admin_filter_errors_are_a_styled_400_naming_the_field(client_as: ClientAs, query: str, field: str) -> None:
    response = client_as("admin").get(query)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'class="site-header"' in html and 'href="/"' in html  # the layout, with a way back
    assert f"<code>{field}</code>" in html, html[-1500:]


@pytest.mark.parametrize(
    ("page", "api"),
    [
        ("/admin/audit?actor=%00", "/api/v1/audit?actor=%00"),
        ("/admin/audit?object_id=%00", "/api/v1/audit?object_id=%00"),
        ("/admin/patients?q=%00", "/api/v1/patients?q=%00"),
        ("/admin/audit?before=99999999999", "/api/v1/audit?before_id=99999999999"),
        ("/admin/audit?action=" + "x" * 65, "/api/v1/audit?action=" + "x" * 65),
    ],
)
def test_pages_and_api_refuse_the_same_parameters_with_the_same_words(
    client_as: ClientAs, dash_users: DashUsers, page: str, api: str
) -> None:
    """One validation (dashboard.params) behind both: the API's message names the parameter, then the
    problem; the page shows the same problem after the same (page-side) parameter name."""
    from markupsafe import escape

    from tests.dashboard_fixtures import bearer

    html = client_as("admin").get(page)
    json = client_as("admin").get(api, headers=bearer(dash_users.tokens["admin"]))
    assert html.status_code == json.status_code == 400
    name, _, problem = json.get_json()["message"].partition(" ")
    page_name = page.split("?", 1)[1].split("=", 1)[0]
    assert name == page_name or (name, page_name) == ("before_id", "before")
    assert f"<code>{page_name}</code> {escape(problem)}" in html.get_data(as_text=True)


def test_audit_objects_link_to_their_pages(pages_app: Flask, client_as: ClientAs, dash_seed: Seed) -> None:
    nurse = client_as("nurse")
    nurse.get("/")
    token = form_csrf(nurse.get(f"/calls/{dash_seed.call_id}").get_data(as_text=True))
    nurse.post(f"/flags/{dash_seed.flag_id}/acknowledge", data={"csrf_token": token, "call_id": dash_seed.call_id})
    admin = client_as("admin")
    admin.get(f"/admin/patients/{dash_seed.patient_id}")
    html = admin.get("/admin/audit").get_data(as_text=True)

    def cell(action: str) -> str:
        return html.split(f'data-action="{action}"', 1)[1].split("</tr>", 1)[0]

    assert f'<a href="/admin/patients/{dash_seed.patient_id}">patient {dash_seed.patient_id}</a>' in cell(
        "baseline.view"
    )
    assert f'<a href="/calls/{dash_seed.call_id}">call {dash_seed.call_id}</a>' in cell("call.view")
    # a flag has no page of its own: its call's page
    assert f'<a href="/calls/{dash_seed.call_id}">flag {dash_seed.flag_id}</a>' in cell("flag.acknowledge")
    object_cell = cell("queue.view").split('<td class="object">', 1)[1].split("</td>", 1)[0]
    assert object_cell == "queue -"  # nothing to open


def _flagged_call_with_evidence(app: Flask, ref: str, evidence: dict[str, object]) -> int:
    """A flagged call of one scored utterance whose stored evidence is ``evidence``; returns its id."""
    with session_scope(app.extensions["painline.sessions"]) as s:
        call_id = make_flagged_call(
            s, ref=ref, severity=0.8, started_at=utcnow() - timedelta(minutes=3), probabilities=(0.7,)
        )
        call = s.get(Call, call_id)
        assert call is not None
        call.evidence = evidence
    return call_id


def test_call_page_states_the_reference_of_pitch_in_semitones(client_as: ClientAs, pages_app: Flask) -> None:
    call_id = _flagged_call_with_evidence(
        pages_app, "ST-1", {"baseline": {"n": 9}, "moved": moved("pitch", "loudness")}
    )
    html = client_as("nurse").get(f"/calls/{call_id}").get_data(as_text=True)
    row = html.split('<th scope="row">pitch</th>', 1)[1].split("</tr>", 1)[0]
    assert row.count("semitones re 27.5 Hz") == 2  # this call and usual: absolute values need the reference
    assert "+2.5 semitones</strong>" in row  # a change is a change: no reference
    assert "re 27.5 Hz" not in html.split('<th scope="row">loudness</th>', 1)[1].split("</tr>", 1)[0]


def test_call_page_without_a_baseline_states_the_reference_too(client_as: ClientAs, pages_app: Flask) -> None:
    call_id = _flagged_call_with_evidence(
        pages_app,
        "ST-2",
        {
            "measures": [
                {
                    "measure": "pitch",
                    "label": "pitch",
                    "unit": "semitones",
                    "value": 33.04,
                    "text": "pitch 33.0 semitones",
                },
                {
                    "measure": "pitch_range",
                    "label": "pitch range",
                    "unit": "semitones",
                    "value": 4.2,
                    "text": "pitch range 4.2 semitones",
                },
            ]
        },
    )
    html = client_as("nurse").get(f"/calls/{call_id}").get_data(as_text=True)
    assert "pitch 33.0 semitones re 27.5 Hz" in html
    assert "pitch range 4.2 semitones<" in html  # a range is a difference


def test_the_pitch_reference_is_the_one_the_measure_is_computed_from() -> None:
    from analysis.evidence import PITCH_FUNCTIONAL
    from dashboard import formatting

    assert f"From{formatting.PITCH_REFERENCE_HZ:g}Hz" in PITCH_FUNCTIONAL


# ---------------------------------------------------------------------------------------------------
# the baseline page an admin can act on (issue 13, item 9)


@dataclass
class MixedBaseline:
    patient_id: int
    baseline_id: int
    call_id: int
    upload_ids: list[int]  # oldest first
    cli_id: int
    call_contribution_ids: list[int]  # by utterance seq


@pytest.fixture
def mixed_baseline(pages_app: Flask) -> MixedBaseline:
    """An upload enrolment of two utterances, a command-line enrolment of one, and two utterances of a
    call resolved as no pain, written as the worker writes them (audit events just after the rows)."""
    from worker.rows import to_bytes

    now = utcnow()
    rng = np.random.default_rng(9)
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        call_id = make_flagged_call(
            s, ref="MIX-7", severity=0.7, started_at=now - timedelta(days=2), probabilities=(0.31, 0.27)
        )
        patient_id = s.get_one(Call, call_id).patient_id
        assert patient_id is not None
        baseline = Baseline(patient_id=patient_id, embedder="egemaps", model_version="test-model-1", stats={}, count=5)
        s.add(baseline)
        s.flush()

        def contribution(at: datetime, speech_s: float | None, **kw: str | int) -> int:
            row = BaselineContribution(
                baseline_id=baseline.id, embedding=to_bytes(rng.normal(size=4)), created_at=at, speech_s=speech_s, **kw
            )
            s.add(row)
            s.flush()
            return row.id

        upload_at = now - timedelta(days=10)
        record(s, "admin1", "baseline.enrol_upload", "patient", patient_id, clips=1).at = upload_at
        upload_ids = [
            contribution(upload_at + timedelta(seconds=20, microseconds=u), speech, source="enrolment")
            for u, speech in enumerate((2.1, 3.4))
        ]
        enrolled = record(s, "admin1", "baseline.enrol", "patient", patient_id, utterances=2)
        enrolled.at = upload_at + timedelta(seconds=25)
        cli_at = now - timedelta(days=5)
        cli_id = contribution(cli_at, 4.2, source="enrolment")
        record(s, "cli:ops", "baseline.enrol", "patient", patient_id, utterances=1).at = cli_at + timedelta(seconds=3)
        utterances = s.execute(
            select(Utterance.id, Utterance.speech_s).where(Utterance.call_id == call_id).order_by(Utterance.seq)
        ).all()
        call_ids = [
            contribution(now - timedelta(days=1), None, source="resolved_call", utterance_id=u.id, call_id=call_id)
            for u in utterances
        ]
        return MixedBaseline(patient_id, baseline.id, call_id, upload_ids, cli_id, call_ids)


def _contribution_row(html: str, contribution_id: int) -> str:
    start = html.index(f'data-contribution-id="{contribution_id}"')
    return html[start : html.index("</tr>", start)]


def _text(fragment: str) -> str:
    """What a reader sees of an HTML fragment: tags dropped, white space collapsed."""
    return re.sub(r"\s+([,.;:])", r"\1", " ".join(re.sub(r"<[^>]+>", " ", fragment).split()))


def test_baseline_page_says_where_each_contribution_came_from_how_long_and_how_it_scored(
    client_as: ClientAs, mixed_baseline: MixedBaseline
) -> None:
    html = client_as("admin").get(f"/admin/patients/{mixed_baseline.patient_id}").get_data(as_text=True)
    first, second = (_text(_contribution_row(html, cid)) for cid in mixed_baseline.upload_ids)
    assert "Enrolment upload, utterance 1 of 2" in first and "uploaded here by admin1" in first
    assert "Enrolment upload, utterance 2 of 2" in second
    assert "2.1 s" in first and "3.4 s" in second and "not scored (enrolment)" in first
    cli = _text(_contribution_row(html, mixed_baseline.cli_id))
    assert "Enrolment from the command line, utterance 1 of 1" in cli and "by ops" in cli and "4.2 s" in cli
    for seq, (cid, probability) in enumerate(zip(mixed_baseline.call_contribution_ids, ("0.31", "0.27"), strict=True)):
        row = _contribution_row(html, cid)
        assert f'href="/calls/{mixed_baseline.call_id}"' in row
        text = _text(row)
        assert f"Call {mixed_baseline.call_id}, utterance {seq + 1}" in text
        assert "3.0 s" in text and probability in text and "resolved call" in text  # length from the utterance row
    # distinct times: the two enrolments and the call no longer read as one moment
    first_upload, cli_row = (
        _text(_contribution_row(html, c)) for c in (mixed_baseline.upload_ids[0], mixed_baseline.cli_id)
    )
    assert first_upload.split("UTC")[0][-17:] != cli_row.split("UTC")[0][-17:]


def test_baseline_page_explains_built_from_against_in_the_statistics(
    pages_app: Flask, client_as: ClientAs, mixed_baseline: MixedBaseline
) -> None:
    client = client_as("admin")
    page = f"/admin/patients/{mixed_baseline.patient_id}"
    html = client.get(page).get_data(as_text=True)
    start = html.index('id="baseline-explained"')
    explained = _text(html[start : html.index("</p>", start)])
    assert "Built from 5" in explained and "5 in the statistics" in explained
    assert "All of them are in the statistics." in explained

    target = mixed_baseline.call_contribution_ids[1]
    client.post(f"/admin/contributions/{target}/exclude", data={"csrf_token": form_csrf(html)})
    stale = client.get(page).get_data(as_text=True)
    assert "1 excluded by an admin; 1 excluded but still counted until the rebuild runs" in _text(stale)
    _run_rebuild(pages_app, mixed_baseline.baseline_id)
    rebuilt = client.get(page).get_data(as_text=True)
    text = _text(rebuilt)
    assert 'id="baseline-recorded">5<' in rebuilt and 'id="baseline-count">4<' in rebuilt
    assert "Built from 5" in text and "4 in the statistics" in text
    assert "The difference: 1 excluded by an admin." in text
    state = _text(_contribution_row(rebuilt, target))
    assert "excluded by admin1" in state and "Include" in state
