"""``painline serve`` and ``painline demo`` as separate processes, the way they are really started."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from painline.config import Settings
from painline.demo import SAMPLE_CALL
from schema.db import make_engine
from schema.models import Call, Utterance

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = Settings().model_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any PAINLINE_* / Twilio settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAINLINE_") and k != "TWILIO_AUTH_TOKEN"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_healthy(url: str, process: subprocess.Popen[str], timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")  # type: ignore[union-attr]
        try:
            status, body = get_json(url)
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
            continue
        if status == 200:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy within {timeout_s} s")


@pytest.fixture
def server_env(app_settings: Settings) -> dict[str, str]:
    return clean_environment(
        PAINLINE_DATABASE_URL=app_settings.database_url,
        PAINLINE_REDIS_URL=app_settings.redis_url,
        PAINLINE_QUEUE_NAME=app_settings.queue_name,
        PAINLINE_VAR_DIR=str(app_settings.var_dir),
        PAINLINE_SECRET_KEY="process-test",
        PAINLINE_LOG_LEVEL="WARNING",
    )


def run_server(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "painline.cli", *args, "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
def test_serve_with_gunicorn_answers_health_checks(server_env: dict[str, str]) -> None:
    for url, process in run_server(["serve", "--gunicorn", "--workers", "1", "--threads", "4"], server_env):
        body = wait_healthy(url + "/healthz", process)
        assert body["checks"] == {"database": "ok", "redis": "ok"}
        # the telephony routes are mounted: an unsigned webhook is refused, not missing
        request = urllib.request.Request(
            url + "/twilio/voice?patient_ref=SECRET-REF-99", data=b"CallSid=CA1", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # gunicorn shuts down cleanly on SIGTERM
        log = process.stdout.read()  # type: ignore[union-attr]
        assert '"POST /twilio/voice HTTP/1.1" 403' in log  # the access log has the path ...
        assert "SECRET-REF-99" not in log  # ... but never the query string


@pytest.mark.slow
def test_development_server_answers_health_checks(server_env: dict[str, str]) -> None:
    for url, process in run_server(["serve"], server_env):
        assert wait_healthy(url + "/healthz", process)["status"] == "ok"


# ---------------------------------------------------------------------------------------------------
# demo


def run_demo(args: list[str], timeout_s: float = 120.0) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "painline.cli", "demo", *args],
        env=clean_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return result, time.monotonic() - started


def test_sample_call_is_small_telephone_audio() -> None:
    import soundfile as sf

    info = sf.info(str(SAMPLE_CALL))
    assert info.samplerate == 8000 and info.channels == 1
    assert 10.0 < info.duration < 40.0
    assert SAMPLE_CALL.stat().st_size < 300 * 1024


def test_demo_without_a_model_says_how_to_train_one(tmp_path: Path) -> None:
    result, _ = run_demo(["--model", str(tmp_path / "none.joblib")], timeout_s=60)
    assert result.returncode == 1
    assert "no model artifact" in result.stderr and "painline train" in result.stderr


@pytest.mark.slow
def test_demo_runs_a_call_end_to_end_and_cleans_up(pain_model_path: Path, tmp_path: Path) -> None:
    """The demo machinery with the small test model, so it runs whether or not a real model exists."""
    var_dir = tmp_path / "demo"
    result, elapsed = run_demo(["--model", str(pain_model_path), "--var-dir", str(var_dir), "--speed", "0"])
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "status finalised" in out and "verdict:" in out
    assert "p(pain)" in out and "scored" in out
    assert "web app stays up" not in out  # without --serve the demo ends with the call
    assert elapsed < 60
    assert (var_dir / "painline.sqlite").exists()
    assert (var_dir / "redis.rdb").exists()  # Redis saved and stopped ...
    assert not (var_dir / "redis.url").exists()  # ... and its socket is gone


@pytest.mark.slow
@pytest.mark.skipif(
    not DEFAULT_MODEL.exists(), reason=f"no trained model at {DEFAULT_MODEL} (train one with `painline train`)"
)
def test_demo_with_the_default_model_while_both_cores_are_busy() -> None:
    """The first run on a fresh machine, model load included, with two other processes spinning."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        result, elapsed = run_demo([])
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status finalised" in result.stdout and "verdict:" in result.stdout
    assert elapsed < 90


_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.mark.slow
def test_demo_serve_ends_on_the_nurse_screen(pain_model_path: Path, tmp_path: Path) -> None:
    """``painline demo --serve``: after the verdict, the printed nurse account signs in and sees the call page."""
    port = free_port()
    var_dir = tmp_path / "demo"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "painline.cli",
            "demo",
            "--serve",
            "--port",
            str(port),
            "--model",
            str(pain_model_path),
            "--var-dir",
            str(var_dir),
            "--speed",
            "0",
        ],
        env=clean_environment(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(line.startswith("Ctrl-C stops") for line in seen):
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
        out = "".join(seen)
        assert "Ctrl-C stops the demo" in out, out
        fields = dict(re.findall(r"^  (sign in at|username|password|the call)\s+(\S+)", out, re.MULTILINE))
        assert fields["username"] == "demo-nurse"
        assert fields["the call"].startswith(f"http://127.0.0.1:{port}/calls/")

        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with browser.open(fields["sign in at"], timeout=10) as response:
            token = _CSRF.search(response.read().decode())
        assert token is not None
        form = urllib.parse.urlencode(
            {"username": fields["username"], "password": fields["password"], "csrf_token": token.group(1)}
        ).encode()
        with browser.open(fields["sign in at"], data=form, timeout=10) as response:
            assert response.status == 200 and "/login" not in response.url
        with browser.open(fields["the call"], timeout=10) as response:
            page = response.read().decode()
        assert response.status == 200
        assert "demo-nurse" in page and "threshold" in page.lower()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not (var_dir / "redis.url").exists()  # the embedded Redis went with the demo
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_stream_process_takes_a_call_beside_the_web_process(server_env: dict[str, str]) -> None:
    """``painline serve`` answers the webhook, ``painline stream`` the socket, as behind one load balancer."""
    from painline.replay import replay_call
    from tests.telephony_fixtures import synthetic_call

    web_port = free_port()
    public_url = f"http://127.0.0.1:{web_port}"
    env = dict(
        server_env,
        PAINLINE_PUBLIC_URL=public_url,
        PAINLINE_HMAC_KEY="process-test-hmac-key",
        TWILIO_AUTH_TOKEN="process-test-token-0123456789",
    )
    web = subprocess.Popen(
        [sys.executable, "-m", "painline.cli", "serve", "--port", str(web_port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        for url, stream in run_server(["stream"], env):
            assert wait_healthy(url + "/healthz", stream)["checks"] == {"database": "ok", "redis": "ok"}
            wait_healthy(public_url + "/healthz", web)  # type: ignore[arg-type]
            result = replay_call(
                synthetic_call([(0.5, 1.5), (3.0, 1.5)], 5.0),
                base_url=public_url,
                public_url=public_url,
                auth_token=env["TWILIO_AUTH_TOKEN"],
                speed=0,
                status_callbacks=False,
                stream_base_url=url,
            )
            assert result.close_code == 1000
            engine = make_engine(env["PAINLINE_DATABASE_URL"])
            try:
                with engine.connect() as db:
                    saved = db.scalar(
                        select(func.count(Utterance.id)).join(Call).where(Call.call_sid == result.call_sid)
                    )
            finally:
                engine.dispose()
            assert saved == 2  # both utterances, saved by the stream process's database threads
            os.killpg(stream.pid, signal.SIGTERM)
            assert stream.wait(timeout=30) == 0  # drains (no call open) and exits cleanly
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
