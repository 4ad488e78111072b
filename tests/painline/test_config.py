"""One typed configuration: every setting from ``Settings``, documented, and refused when it would run wrong."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from painline.config import (
    Settings,
    SettingsError,
    configuration_markdown,
    env_name,
    env_names,
    production_problems,
)

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("analysis", "telephony", "worker", "dashboard", "schema")

GOOD_PRODUCTION = Settings(
    database_url="postgresql+psycopg://painline@db/painline",
    redis_url="redis://redis:6379/0",
    public_url="https://painline.example.org",
    twilio_auth_token="t" * 32,
    hmac_key="h" * 64,
    secret_key="s" * 64,
    data_keys="k" * 44,
    next_redirect_url="https://hotline.example.org/twiml",
)


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAINLINE_") and k != "TWILIO_AUTH_TOKEN"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_docs_configuration_is_generated_from_settings() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configuration_markdown(), "regenerate: python -m painline.config > docs/configuration.md"
    for name in env_names():
        assert f"`{name}`" in committed


def test_every_setting_has_a_meaning() -> None:
    for f in fields(Settings):
        assert len(str(f.metadata.get("doc", ""))) > 10, f"{f.name} has no description"


def test_from_env_reads_every_field_with_its_type(tmp_path: Path) -> None:
    environ = {
        env_name("idle_timeout_s"): "60",
        env_name("flag_threshold"): "0.4",
        env_name("hear_path"): str(tmp_path),
        env_name("twilio_auth_token"): "tok",
        env_name("log_level"): "DEBUG",
    }
    settings = Settings.from_env(environ)
    assert settings.idle_timeout_s == 60 and isinstance(settings.idle_timeout_s, int)
    assert settings.flag_threshold == pytest.approx(0.4)
    assert settings.hear_path == tmp_path
    assert settings.twilio_auth_token == "tok"
    assert settings.log_level == "DEBUG"
    assert Settings.from_env({}) == Settings()


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(SettingsError, match="PAINLINE_LOGIN_LIMIT='five'"):
        Settings.from_env({"PAINLINE_LOGIN_LIMIT": "five"})


def test_the_cli_reports_a_bad_value_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "painline.cli", "check"],
        capture_output=True,
        text=True,
        env=clean_environment(PAINLINE_JOB_RETRIES="many"),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "painline: PAINLINE_JOB_RETRIES='many' is not a valid int"


def test_no_layer_reads_the_environment_or_settings_by_getattr() -> None:
    """Only painline/ reads settings; below it configs are typed and passed in (no defaults restated)."""
    offenders = []
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in {"environ", "getenv"}
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "os"
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reads os.{node.attr}")
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr"
                    and len(node.args) == 3
                    and isinstance(node.args[0], ast.Name)
                    and node.args[0].id in {"settings", "cfg", "config"}
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} getattr on {node.args[0].id}")
    assert offenders == []


def test_good_production_settings_have_no_problems(tmp_path: Path) -> None:
    assert production_problems(GOOD_PRODUCTION, web_processes=4) == []


def test_every_problem_is_listed_at_once() -> None:
    problems = production_problems(
        Settings(
            public_url="http://painline.example.org",
            flag_webhook_url="https://x",
            next_dial="+15550100",
            next_enqueue="nurses",
        ),
        web_processes=2,
    )
    text = "\n".join(p.message for p in problems)
    for variable in (
        "PAINLINE_PUBLIC_URL",
        "TWILIO_AUTH_TOKEN",
        "PAINLINE_HMAC_KEY",
        "PAINLINE_SECRET_KEY",
        "PAINLINE_DATA_KEYS",
        "PAINLINE_DATABASE_URL",
        "PAINLINE_REDIS_URL",
        "PAINLINE_NEXT_DIAL",
        "PAINLINE_FLAG_WEBHOOK_SECRET",
    ):
        assert variable in text
    fatal = {p.message.split(" ")[0] for p in problems if p.fatal}
    assert "PAINLINE_SECRET_KEY" in fatal  # two web processes: sign-ins would fail at random
    assert "PAINLINE_PUBLIC_URL" not in fatal  # a laptop may serve plain http


def test_one_process_without_a_secret_key_only_warns() -> None:
    problems = production_problems(GOOD_PRODUCTION.with_(secret_key=""), web_processes=1)
    assert [p.fatal for p in problems] == [False]


def test_gunicorn_with_two_processes_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "painline.cli", "serve", "--gunicorn", "--workers", "2", "--port", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=clean_environment(PAINLINE_VAR_DIR=str(tmp_path)),
    )
    assert result.returncode == 2
    assert "PAINLINE_SECRET_KEY is not set" in result.stderr
    assert "secrets.token_hex(32)" in result.stderr  # how to make one
    assert "exec:" not in result.stdout  # gunicorn was never started


def test_painline_check_lists_every_problem(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "painline.cli", "check"],
        capture_output=True,
        text=True,
        env=clean_environment(PAINLINE_VAR_DIR=str(tmp_path), PAINLINE_PUBLIC_URL="http://example.org"),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("  - ")]
    assert len(lines) == len(production_problems(Settings(public_url="http://example.org"), web_processes=2))
    assert any("[refuses to start] PAINLINE_SECRET_KEY" in line for line in lines)
    assert any("PAINLINE_PUBLIC_URL must be the https URL" in line for line in lines)

    good = {
        env_name(f.name): str(getattr(GOOD_PRODUCTION, f.name))
        for f in fields(Settings)
        if getattr(GOOD_PRODUCTION, f.name) != f.default
    }
    result = subprocess.run(
        [sys.executable, "-m", "painline.cli", "check"],
        capture_output=True,
        text=True,
        env=clean_environment(**good),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert "no problems" in result.stdout
