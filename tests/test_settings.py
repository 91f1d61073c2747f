"""Configuration fails loudly: a bad value stops start-up and names the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from pumptrack.env import env_bool, env_decimal, env_decimal_list, env_int, env_str

ROOT = Path(__file__).resolve().parent.parent
NAME = "PUMPTRACK_TEST_SETTING"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NAME, raising=False)
    monkeypatch.delenv(f"{NAME}_FILE", raising=False)


# ---------------------------------------------------------------------------- env_bool


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True), ("true", True), ("TRUE", True), ("yes", True), (" on ", True),
        ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
    ],
)  # fmt: skip
def test_it_reads_booleans(monkeypatch, raw, expected):
    monkeypatch.setenv(NAME, raw)
    assert env_bool(NAME, not expected) is expected


@pytest.mark.parametrize("default", [True, False])
def test_it_uses_the_boolean_default_when_unset(default):
    assert env_bool(NAME, default) is default


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "truee"])
def test_it_rejects_a_word_that_is_not_a_boolean(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ImproperlyConfigured, match=NAME):
        env_bool(NAME, False)


# ---------------------------------------------------------------------------- env_int


@pytest.mark.parametrize(
    ("raw", "kwargs", "expected"),
    [
        ("25", {}, 25),
        (" 587 ", {"minimum": 1, "maximum": 65535}, 587),
        ("1", {"minimum": 1}, 1),
        ("65535", {"maximum": 65535}, 65535),
        ("", {}, 7),  # blank: the default
    ],
)
def test_it_reads_whole_numbers_within_bounds(monkeypatch, raw, kwargs, expected):
    monkeypatch.setenv(NAME, raw)
    assert env_int(NAME, 7, **kwargs) == expected


@pytest.mark.parametrize(
    ("raw", "kwargs", "message"),
    [
        ("abc", {}, "not a whole number"),
        ("2.5", {}, "not a whole number"),
        ("0", {"minimum": 1}, "below the minimum 1"),
        ("-1", {"minimum": 0}, "below the minimum 0"),
        ("65536", {"maximum": 65535}, "above the maximum 65535"),
    ],
)
def test_it_rejects_bad_or_out_of_range_whole_numbers(monkeypatch, raw, kwargs, message):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ImproperlyConfigured, match=f"{NAME}.*{message}"):
        env_int(NAME, 7, **kwargs)


def test_it_checks_the_default_against_the_bounds_too():
    with pytest.raises(ImproperlyConfigured, match="below the minimum"):
        env_int(NAME, 0, minimum=1)


# ---------------------------------------------------------------------------- env_decimal


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1000", Decimal("1000")), (" 12.5 ", Decimal("12.5")), ("", Decimal("40")), ("1e3", Decimal("1000"))],
)
def test_it_reads_decimals_exactly(monkeypatch, raw, expected):
    monkeypatch.setenv(NAME, raw)
    value = env_decimal(NAME, "40", minimum=Decimal("0"))
    assert isinstance(value, Decimal)
    assert value == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("lots", "not a number"),
        ("12,5", "not a number"),  # a decimal comma is a typo here, not 125
        ("NaN", "not a finite number"),
        ("Infinity", "not a finite number"),
        ("-0.5", "below the minimum 0"),
    ],
)
def test_it_rejects_bad_decimals(monkeypatch, raw, message):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ImproperlyConfigured, match=f"{NAME}.*{message}"):
        env_decimal(NAME, "40", minimum=Decimal("0"))


# ---------------------------------------------------------------------------- env_decimal_list


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, (Decimal("50"), Decimal("500"))),
        ("1000", (Decimal("1000"),)),
        (" 50 , 500,2000, ", (Decimal("50"), Decimal("500"), Decimal("2000"))),
    ],
)
def test_it_reads_comma_separated_decimals(monkeypatch, raw, expected):
    if raw is not None:
        monkeypatch.setenv(NAME, raw)
    assert env_decimal_list(NAME, "50,500") == expected


@pytest.mark.parametrize("raw", ["50,abc", "", " , ", "0,500", "-50", "50,NaN", "Infinity"])
def test_it_rejects_a_list_that_is_not_all_positive_numbers(monkeypatch, raw):
    monkeypatch.setenv(NAME, raw)
    with pytest.raises(ImproperlyConfigured, match=NAME):
        env_decimal_list(NAME, "50,500")


# ---------------------------------------------------------------------------- *_FILE secrets


def test_it_reads_a_value_from_the_file_named_by_the_file_variable(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-a-file\n")
    monkeypatch.setenv(f"{NAME}_FILE", str(secret))
    assert env_str(NAME) == "s3cret-from-a-file"


def test_it_prefers_the_variable_over_its_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file")
    monkeypatch.setenv(NAME, "from-env")
    monkeypatch.setenv(f"{NAME}_FILE", str(secret))
    assert env_str(NAME) == "from-env"


def test_it_applies_the_type_to_a_value_read_from_a_file(monkeypatch, tmp_path):
    (tmp_path / "port").write_text("2525\n")
    (tmp_path / "flag").write_text("perhaps\n")
    monkeypatch.setenv(f"{NAME}_FILE", str(tmp_path / "port"))
    assert env_int(NAME, 25) == 2525
    monkeypatch.setenv(f"{NAME}_FILE", str(tmp_path / "flag"))
    with pytest.raises(ImproperlyConfigured, match=NAME):
        env_bool(NAME, False)


def test_it_rejects_a_file_variable_naming_a_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv(f"{NAME}_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match=f"{NAME}_FILE.*cannot be read"):
        env_str(NAME)


# ---------------------------------------------------------------------------- start-up


def _start_django(tmp_path: Path, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    """Load the real settings in a fresh interpreter, as `manage.py` or a worker would."""
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SECRET_KEY_FILE", "DEBUG", "DEBUG_FILE")}
    env.update(DJANGO_SETTINGS_MODULE="pumptrack.settings", PUMPTRACK_VAR_DIR=str(tmp_path / "var"))
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off(tmp_path):
    proc = _start_django(tmp_path, DEBUG="false")
    assert proc.returncode != 0
    assert "SECRET_KEY" in proc.stderr
    assert "started" not in proc.stdout


def test_it_starts_without_a_secret_key_in_debug(tmp_path):
    proc = _start_django(tmp_path, DEBUG="true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "started"


def test_it_starts_with_a_secret_key_from_a_file(tmp_path):
    key = tmp_path / "secret_key"
    key.write_text("a-long-production-secret-read-from-a-mounted-file\n")
    proc = _start_django(tmp_path, DEBUG="false", SECRET_KEY_FILE=str(key))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DEBUG", "maybe"), ("EMAIL_PORT", "smtp"), ("DATABASE_CONN_MAX_AGE", "-1"), ("PUMPTRACK_DOSE_WARNING_MCG_PER_DAY", "lots")],
)
def test_it_refuses_to_start_with_a_malformed_variable(tmp_path, variable, value):
    proc = _start_django(tmp_path, SECRET_KEY="x" * 50, **{variable: value})
    assert proc.returncode != 0
    assert variable in proc.stderr


def test_production_settings_pass_the_deploy_check() -> None:
    """With PUMPTRACK_HTTPS, `manage.py check --deploy` has no warning (issue 6 hardening)."""
    import os
    import secrets
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_ALLOW_ASYNC_UNSAFE", "DEBUG")}
    env.update(DEBUG="false", SECRET_KEY=secrets.token_urlsafe(50), PUMPTRACK_HTTPS="true", ALLOWED_HOSTS="pumps.example.org")
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout
