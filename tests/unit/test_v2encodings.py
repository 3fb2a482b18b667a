"""The v2 encodings benchmark: its request bodies, wrk script, and the section judged from the
figures."""

import json

import numpy as np

from nnship.loadtests import v2encodings


def test_bodies_carry_the_same_rows():
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    (as_json, json_headers), (binary, headers) = v2encodings.bodies(x).values()
    tensor = json.loads(as_json)["inputs"][0]
    assert np.array_equal(np.asarray(tensor["data"], dtype=np.float32).reshape(x.shape), x)
    n = int(headers["Inference-Header-Content-Length"])
    header = json.loads(binary[:n])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    assert header["parameters"] == {"binary_data_output": True}
    assert np.array_equal(np.frombuffer(binary[n:], dtype="<f4").reshape(x.shape), x)
    assert json_headers == {"Content-Type": "application/json"}


def test_wrk_script_reads_the_body_from_its_file(tmp_path):
    """Binary bytes have no safe Lua literal: the script reads them; headers are quoted."""
    body = tmp_path / "b.body"
    script = v2encodings.lua(body, {"Inference-Header-Content-Length": "12"}, tmp_path / "s.lua")
    text = script.read_text()
    assert 'wrk.headers["Inference-Header-Content-Length"] = "12"' in text
    assert f"io.open(\"{body}\", 'rb')" in text and "wrk.body = f:read('*a')" in text


def kind(rows_per_s, cpu, infer):
    return {
        "rows_per_s": rows_per_s,
        "p50_ms": 5.0,
        "p99_ms": 9.0,
        "errors": 0,
        "cpu_us_per_row": cpu,
        "infer_us_per_row": infer,
    }


def test_section_judges_each_model_by_its_ratio():
    profile = dict.fromkeys([*(n for n, _ in v2encodings.PLACES), v2encodings.OTHER], 0.2)
    results = {
        "wide": {
            "JSON": kind(100_000, 12.0, 1.0),
            "binary": kind(310_000, 3.0, 1.0),
            "ratio": 3.1,
            "values_per_row": 64,
            "profile": profile,
        },
        "heavy": {
            "JSON": kind(4_000, 250.0, 240.0),
            "binary": kind(4_100, 241.0, 240.0),
            "ratio": 1.02,
            "values_per_row": 64,
            "profile": profile,
        },
    }
    text = v2encodings.render(results)
    assert text.startswith(v2encodings.BEGIN) and text.endswith(v2encodings.END)
    assert "| wide | 3.10× | pass | 4.00× | 33% | 12.00× |" in text
    assert "| heavy | 1.02× | FAIL | 1.04× | 100% | 1.04× |" in text
    assert "| wide | 64 | binary | 310,000 | 5.0 | 9.0 | 0 | 3.00 | 1.00 | 2.00 | 0.51 |" in text
    assert "| heavy | 20% | 20% | 20% | 20% | 20% |" in text


def test_section_replaces_only_its_own(tmp_path):
    report = tmp_path / "r.md"
    report.write_text(f"# head\n\n{v2encodings.BEGIN}\nold\n{v2encodings.END}\n\ntail\n")
    section = f"{v2encodings.BEGIN}\nnew\n{v2encodings.END}"
    text = v2encodings.upsert(report, section)
    assert text == f"# head\n\n{section}\n\ntail\n"
    assert v2encodings.keep(report, "# fresh\n").endswith(
        f"{v2encodings.BEGIN}\nold\n{v2encodings.END}\n"
    )
