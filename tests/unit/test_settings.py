"""Every setting has a type and a declared range; a value outside it is refused in one line."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from nnship.cli import main
from nnship.errors import NnshipError
from nnship.service.settings import (
    TABLE_BEGIN,
    TABLE_END,
    Settings,
    allowed_range,
    markdown_table,
    variable,
)

NUMERIC = [
    SimpleNamespace(name=name, default=info.default, range=allowed_range(info)[:2])
    for name, info in Settings.model_fields.items()
    if info.annotation in (int, float)
]
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_number_declares_its_range():
    assert NUMERIC
    for f in NUMERIC:
        low, high = f.range
        assert math.isfinite(low) and math.isfinite(high) and low <= f.default <= high, f.name


def test_readme_settings_table_is_current():
    """Regenerate with `python -m nnship.service.settings --markdown` and paste between markers."""
    text = README.read_text()
    start, end = text.index(TABLE_BEGIN), text.index(TABLE_END) + len(TABLE_END)
    assert text[start:end] == markdown_table()


def test_every_setting_has_help_text():
    for name, info in Settings.model_fields.items():
        assert info.description and "\n" not in info.description, name


def out_of_range(f) -> list[str]:
    """Values just outside the field's range, and the non-finite ones for floats."""
    low, high = f.range
    step = 1 if type(f.default) is int else 0.001
    values = [low - step, high + step, -1, 10**12]
    if type(f.default) is float:
        values += [math.nan, math.inf, -math.inf]
    return [str(v) for v in values if not low <= v <= high]


CASES = [(f.name, raw) for f in NUMERIC for raw in out_of_range(f)]


@pytest.mark.parametrize(("name", "raw"), CASES, ids=[f"{n}={r}" for n, r in CASES])
def test_out_of_range_refused_in_one_line(name, raw):
    with pytest.raises(NnshipError) as e:
        Settings.from_env({variable(name): raw})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{variable(name)}=")
    assert "out of range: allowed is " in msg or "is not a valid int" in msg


@pytest.mark.parametrize("f", NUMERIC, ids=[f.name for f in NUMERIC])
def test_bounds_themselves_accepted(f):
    low, high = f.range
    for v in (low, high):
        assert getattr(Settings.from_env({variable(f.name): str(v)}), f.name) == v


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNSHIP_TIMEOUT_S": "nan"}, "NNSHIP_TIMEOUT_S=nan is out of range: allowed is a finite"),
        ({"NNSHIP_MAX_WAIT_MS": "inf"}, "NNSHIP_MAX_WAIT_MS=inf is out of range"),
        ({"NNSHIP_RATE_LIMIT": "inf"}, "NNSHIP_RATE_LIMIT=inf is out of range"),
        ({"NNSHIP_MAX_CONCURRENCY": "0"}, "allowed is an integer from 1 to 1000000"),
        ({"NNSHIP_WORKERS": "2.5"}, "NNSHIP_WORKERS='2.5' is not a valid int"),
        ({"NNSHIP_PROTECT_ALL": "maybe"}, "NNSHIP_PROTECT_ALL='maybe' is not a valid bool"),
        ({"NNSHIP_PREDICT_ROUTE": "fast"}, "must be one of asgi, bentoml"),
        ({"NNSHIP_API_KEY_ENV": "MY-KEY"}, "not an environment variable name"),
        ({"NNSHIP_RATE_LIMIT": "1e-320"}, "allowed is 0 (off) or a finite number from 0.001 to"),
        ({"NNSHIP_RATE_LIMIT": "0.0009"}, "NNSHIP_RATE_LIMIT=0.0009 is out of range"),
        ({"NNSHIP_TRUSTED_PROXIES": "*"}, "NNSHIP_TRUSTED_PROXIES='*': '*' is not an IP address"),
        ({"NNSHIP_TRUSTED_PROXIES": "10.0.0.1, garbage!!"}, "'garbage!!' is not an IP address"),
        ({"NNSHIP_TRUSTED_PROXIES": "10.0.0.1/8"}, "'10.0.0.1/8' is not an IP address"),
        ({"NNSHIP_TRUSTED_PROXIES": "proxy.local"}, "'proxy.local' is not an IP address"),
    ],
)
def test_reported_values(env, message):
    with pytest.raises(NnshipError, match=re.escape(message)):
        Settings.from_env(env)


@pytest.mark.parametrize("proxies", ["", "10.0.0.1", " 10.0.0.0/8, ::1 ,fd00::/8", "127.0.0.1,"])
def test_proxy_addresses_and_networks_accepted(proxies):
    assert Settings.from_env({"NNSHIP_TRUSTED_PROXIES": proxies}).trusted_proxies == proxies


@pytest.mark.parametrize("rate", ["0", "0.001", "0.5"])
def test_rates_off_or_not_too_small_accepted(rate):
    assert Settings.from_env({"NNSHIP_RATE_LIMIT": rate}).rate_limit == float(rate)


@pytest.mark.parametrize("key", ["ключ", "two words", "tab\tkey", "caf\u00e9", "k\x7f"])
def test_api_key_must_be_visible_ascii(monkeypatch, key):
    """Refused in one line that does not show the key."""
    monkeypatch.setenv("NNSHIP_TEST_KEY", key)
    with pytest.raises(NnshipError) as e:
        Settings(api_key_env="NNSHIP_TEST_KEY").required_api_key(explicit=False)
    msg = str(e.value)
    assert "\n" not in msg and "NNSHIP_TEST_KEY holds characters other than visible ASCII" in msg
    assert key not in msg


def test_values_in_code_are_checked_too():
    with pytest.raises(NnshipError, match=r"NNSHIP_MAX_ROWS=1\.5 is not a valid int"):
        Settings(max_rows=1.5)
    with pytest.raises(NnshipError, match="NNSHIP_GRACE_S=0 is out of range"):
        Settings(grace_s=0)


def test_named_key_variable_must_be_set(monkeypatch):
    monkeypatch.delenv("NNSHIP_TEST_KEY", raising=False)
    s = Settings(api_key_env="NNSHIP_TEST_KEY")
    assert s.required_api_key(explicit=False) == ""  # the default: a warning at start-up
    with pytest.raises(NnshipError, match=r"API key variable NNSHIP_TEST_KEY .* is unset or empty"):
        s.required_api_key(explicit=True)
    monkeypatch.setenv("NNSHIP_TEST_KEY", "")
    with pytest.raises(NnshipError):
        s.required_api_key(explicit=True)
    monkeypatch.setenv("NNSHIP_TEST_KEY", "k")
    assert s.required_api_key(explicit=True) == "k"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--timeout-s", "nan"], "NNSHIP_TIMEOUT_S=nan is out of range"),
        (["--max-wait-ms", "inf"], "NNSHIP_MAX_WAIT_MS=inf is out of range"),
        (["--rate-limit", "inf"], "NNSHIP_RATE_LIMIT=inf is out of range"),
        (["--max-concurrency", "0"], "NNSHIP_MAX_CONCURRENCY=0 is out of range"),
        (["--grace-s", "-1"], "NNSHIP_GRACE_S=-1.0 is out of range"),
        (["--api-key-env", "NNSHIP_TEST_KEY"], "API key variable NNSHIP_TEST_KEY"),
        (["--rate-limit", "1e-320"], "NNSHIP_RATE_LIMIT=1e-320 is out of range"),
        (["--port", "70000"], "--port 70000 is out of range: allowed is an integer from 1 to"),
        (["--port", "-5"], "--port -5 is out of range"),
        (["--port", "0"], "--port 0 is out of range"),
        (["--host", "a" * 300], "cannot listen on aaa"),
        (["--host", "bad\x00host"], "is not a host name or IP address"),
    ],
)
def test_serve_flags_refused_in_one_line(capsys, monkeypatch, argv, message):
    """Refused before anything starts: no model lookup, no server."""
    monkeypatch.delenv("NNSHIP_TEST_KEY", raising=False)
    assert main(["serve", "no-such-model:v1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnship: error: ") and "\n" not in err and message in err


def test_serve_flags_are_derived_from_the_settings(monkeypatch):
    """Every setting but the model (the positional argument) has its flag, help and constraints;
    the flags of earlier releases keep their names."""
    import argparse

    from nnship.service.cli import add_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    actions = {a.dest: a for a in p._actions}
    for name, info in Settings.model_fields.items():
        if name != "model":
            help_text = actions[name].help % {}  # argparse's own escaping undone
            assert info.description in help_text and variable(name) in help_text
    assert actions["predict_route"].choices == ("asgi", "bentoml")
    for key in [k for k in os.environ if k.startswith("NNSHIP_")]:
        monkeypatch.delenv(key)
    argv = ["m", "--variant", "fp32", "--workers", "2", "--threads", "3", "--max-batch-size", "8"]
    argv += ["--max-wait-ms", "1.5", "--max-latency-ms", "900", "--max-rows", "7"]
    argv += ["--max-body-bytes", "1000", "--rate-limit", "2.5", "--max-concurrency", "9"]
    argv += ["--timeout-s", "4", "--grace-s", "5", "--protect-all", "--strict-range"]
    argv += ["--require-gpu", "--tensorrt", "--api-key-env", "MY_KEY", "--no-bound-metric-paths"]
    s = settings_from_args(p.parse_args(argv))
    assert (s.variant, s.workers, s.threads, s.max_batch_size, s.max_wait_ms) == (
        "fp32",
        2,
        3,
        8,
        1.5,
    )
    assert (s.max_latency_ms, s.max_rows, s.max_body_bytes, s.rate_limit) == (900, 7, 1000, 2.5)
    assert (s.max_concurrency, s.timeout_s, s.grace_s, s.api_key_env) == (9, 4, 5, "MY_KEY")
    assert s.protect_all and s.strict_range and s.require_gpu and s.tensorrt
    assert not s.bound_metric_paths
    monkeypatch.setenv("NNSHIP_WORKERS", "4")  # a flag not given leaves the variable's value
    assert settings_from_args(p.parse_args(["m"])).workers == 4
