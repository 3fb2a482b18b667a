"""Named records and CSV bodies on /predict over real HTTP, on both routes (nnship's ASGI endpoint
and BentoML's declared API), features named in out_of_range, and the curl line `nnship serve`
prints, pasted into a shell."""

import csv
import io
import json
import subprocess

import httpx
import numpy as np
import pytest

from nnship.package import load_package
from nnship.service.cli import example_curl
from nnship.service.settings import Settings
from tests.server import iris_env, running_server

NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module", params=["asgi", "bentoml"])
def url(request, iris_package):
    env = iris_env(iris_package, max_rows="8", predict_route=request.param)
    with running_server(env) as (base, _):
        yield base


def predict(url, body):
    return httpx.post(f"{url}/predict", json=body, timeout=30)


def predict_csv(url, text):
    headers = {"content-type": "text/csv"}
    return httpx.post(f"{url}/predict", content=text.encode(), headers=headers, timeout=30)


def answer(response):
    assert response.status_code == 200, response.text
    return response.json()


def refused(response):
    """(rule, loc, message) of a 400."""
    assert response.status_code == 400, response.text
    detail = response.json()["detail"][0]
    return detail["type"], detail["loc"], detail["msg"]


def test_records_answer_as_positional_rows_in_any_key_order(url):
    positional = answer(predict(url, {"inputs": ROWS}))
    forward = [dict(zip(NAMES, r, strict=True)) for r in ROWS]
    backward = [dict(reversed(list(d.items()))) for d in forward]
    assert answer(predict(url, {"inputs": forward})) == positional
    assert answer(predict(url, {"inputs": backward})) == positional


def test_csv_answers_as_positional_rows_in_any_column_order(url):
    positional = answer(predict(url, {"inputs": ROWS}))
    order = [2, 0, 3, 1]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([NAMES[j] for j in order])
    writer.writerows([[r[j] for j in order] for r in ROWS])
    assert answer(predict_csv(url, out.getvalue())) == positional


def test_record_refusals_name_the_rule_and_the_features(url):
    record = dict(zip(NAMES, ROWS[0], strict=True))
    rule, loc, msg = refused(predict(url, {"inputs": [record, {**record, "colour": 1}]}))
    assert (rule, loc) == ("unknown_features", ["inputs", 1]) and "'colour'" in msg
    del record["petal width (cm)"]
    rule, loc, msg = refused(predict(url, {"inputs": [record]}))
    assert (rule, loc) == ("missing_features", ["inputs", 0]) and "'petal width (cm)'" in msg
    record["petal width (cm)"] = "0.2"
    rule, loc, _ = refused(predict(url, {"inputs": [record]}))
    assert (rule, loc) == ("number_required", ["inputs", 0, "petal width (cm)"])
    rule, loc, _ = refused(predict(url, {"inputs": [ROWS[0], {**record, "petal width (cm)": 1}]}))
    assert (rule, loc) == ("one_row_form", ["inputs", 1])
    rows = [dict(zip(NAMES, ROWS[0], strict=True))] * 9
    assert refused(predict(url, {"inputs": rows}))[0] == "max_rows"


def test_csv_refusals_name_the_row_and_the_column(url):
    head = ",".join(f'"{n}"' for n in NAMES) + "\n"
    rule, loc, msg = refused(predict_csv(url, head + "5.1,3.5,1.4,0.2\n5.1,3.5,x,0.2\n"))
    assert (rule, loc) == ("number_required", ["row", 2, "petal length (cm)"]) and "'x'" in msg
    assert refused(predict_csv(url, ""))[0] == "csv_header"
    assert refused(predict_csv(url, head))[0] == "non_empty_batch"
    rule, loc, msg = refused(predict_csv(url, head.strip() + ",id\n5.1,3.5,1.4,0.2,7\n"))
    assert (rule, loc) == ("unknown_features", ["header"]) and "'id'" in msg
    assert refused(predict_csv(url, head + "5.1,3.5,1.4,0.2\n" * 9))[0] == "max_rows"


def test_out_of_range_names_the_features_on_predict_and_v2(url, iris_package):
    rows = [ROWS[0], [500.0, 3.5, 1.4, -80.0], ROWS[1]]
    flagged = [{"row": 1, "features": ["sepal length (cm)", "petal width (cm)"]}]
    assert answer(predict(url, {"inputs": rows}))["out_of_range"] == flagged
    assert "out_of_range" not in answer(predict(url, {"inputs": ROWS}))
    tensor = {"name": "input", "datatype": "FP32", "shape": [3, 4], "data": rows}
    v2 = httpx.post(f"{url}/v2/models/iris-served/infer", json={"inputs": [tensor]}, timeout=30)
    assert json.loads(answer(v2)["parameters"]["out_of_range"]) == flagged


# feature names that need JSON escaping or shell quoting
ODD = ["it's", 'say "hi"', "$HOME `id`", "back\\slash", "naïve ünïcode"]


@pytest.fixture(scope="module")
def odd_package(tmp_path_factory):
    """A 2-epoch MLP trained on a CSV whose columns have awkward names, exported as fp32 only."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(0, 1, (200, len(ODD))) + y[:, None]
    with open(root / "odd.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*ODD, "label"])
        writer.writerows([*row, label] for row, label in zip(x.tolist(), y.tolist(), strict=True))
    run = str(root / "run")
    train(
        TrainConfig(model="mlp", dataset=str(root / "odd.csv"), target="label", epochs=2, out=run)
    )
    export_run(ExportOptions(run, variants=("fp32",), store=False, bench_seconds=0.02, threads=1))
    return root / "run" / "package"


def test_the_printed_curl_line_works_when_pasted(odd_package):
    manifest = load_package(str(odd_package)).manifest
    assert manifest.input.feature_names == ODD
    with running_server({"NNSHIP_MODEL": str(odd_package), "NNSHIP_THREADS": "1"}) as (base, _):
        line = example_curl(base, manifest, Settings())
        assert '{"inputs":[{' in line  # a named record
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        assert got["predictions"][0] in manifest.output.labels, got
        # the same row, positional, gets the same answer
        medians = [round(s.quantiles.q50, 3) for s in manifest.input.stats]
        assert answer(predict(base, {"inputs": [medians]})) == got
