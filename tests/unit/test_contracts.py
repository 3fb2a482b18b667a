"""The typed file contracts: one-line refusals naming the file and field, published schemas."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnship.contracts import SCHEMA_COMMAND, as_json, read_manifest, schemas
from nnship.errors import NnshipError
from nnship.numeric import softmax
from tests.manifests import manifest

REPO = Path(__file__).resolve().parents[2]


def _choice(**change) -> dict:
    """A `choice` record for the in-memory manifest, with fields changed."""
    fp32 = {"metric": 1.0, "p50_ms": 0.02, "batched_rps": 9e4, "served_rps": 9e4}
    record = {
        "objective": "balanced",
        "rule": "most rows/s",
        "provider": "CPUExecutionProvider",
        "batch": 128,
        "chosen": "fp32",
        "candidates": {"fp32": {**fp32, "served_as": "batched"}},
    }
    return {**record, **change}


def _written(tmp_path, edit) -> Path:
    record = {"format": "nnship.package/1", **as_json(manifest())}
    edit(record)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(record))
    return path


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: m["input"]["stats"][2].pop("std"), "input.stats[2].std: missing"),
        (lambda m: m["input"]["stats"][0].update(min=True), "input.stats[0].min: "),
        (lambda m: m["variants"]["fp32"].update(shipped=1), "variants.fp32.shipped: "),
        (lambda m: m.update(version=3), "version: "),
        (lambda m: m["input"].update(shape=[0]), "input.shape[0]: "),
        (lambda m: m["input"]["stats"].pop(), "input.stats: 3 entries for 4 features"),
        (lambda m: m.pop("default_variant"), "default_variant: missing"),
        (
            lambda m: m.update(choice=_choice(chosen="int8-static")),
            "choice.chosen: 'int8-static' is",
        ),
        (lambda m: m.update(choice=_choice(objective="fastest")), "choice.objective: "),
        (
            lambda m: m["variants"]["fp32"].update(
                output_diff={"on": "logits", "max_abs": 1.0, "rows": 3}
            ),
            "variants.fp32.output_diff.on: ",
        ),
    ],
)
def test_a_bad_field_is_refused_in_one_line_naming_file_and_field(tmp_path, edit, problem):
    path = _written(tmp_path, edit)
    with pytest.raises(NnshipError) as e:
        read_manifest(path)
    text = str(e.value)
    assert text.startswith(f"{path}: not a valid nnship model package: {problem}"), text
    assert "\n" not in text


def test_a_written_manifest_reads_back_unchanged(tmp_path):
    path = _written(tmp_path, lambda m: None)
    assert as_json(read_manifest(path)) == json.loads(path.read_text())
    assert read_manifest(path).takes_sequences is False
    assert read_manifest(path).choice is None  # written before the objective: still loads


def test_the_choice_of_the_default_reads_back_typed(tmp_path):
    path = _written(tmp_path, lambda m: m.update(choice=_choice()))
    m = read_manifest(path)
    assert as_json(m) == json.loads(path.read_text())
    assert m.choice.objective == "balanced" and m.choice.candidates["fp32"].served_as == "batched"


def test_published_schemas_are_current():
    for name, text in schemas().items():
        path = REPO / "docs" / "schemas" / name
        assert path.is_file() and path.read_text() == text, (
            f"{path} is stale; refresh it with `{SCHEMA_COMMAND}` (make schemas)"
        )


def test_schema_command_writes_what_the_test_expects(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nnship.contracts", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    schema = json.loads((tmp_path / "manifest.schema.json").read_text())
    assert "default_variant" in schema["required"] and schema["title"] == "Manifest"


def test_softmax_is_stable_and_log_softmax_agrees():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    p = softmax(logits)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1.0)
    assert p[0, 0] == 1.0 and p[0, 2] == 0.0
    logp = softmax(logits, log=True)
    assert np.isfinite(logp).all() and logp[0, 2] == -2000.0
    assert np.allclose(np.exp(logp), p)
