import pytest
import torch

from nnship.models import ACTIVATIONS, REGISTRY, build_model

SHAPES = {"mlp": (13,), "cnn": (1, 8, 8), "rnn": (8, 5), "lstm": (8, 5), "gru": (8, 5)}


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_and_dtypes(name, activation, batch):
    shape = SHAPES[name]
    model = build_model(name, {"activation": activation}, shape, num_outputs=4).eval()
    x = torch.randn(batch, *shape)
    y = model(x)
    assert y.shape == (batch, 4)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    model.train()
    if batch > 1:  # batch norm needs more than one row in training mode
        model(x).sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_rows_are_independent_in_eval():
    model = build_model("lstm", {"bidirectional": True}, (8, 5), 3).eval()
    x = torch.randn(6, 8, 5)
    torch.testing.assert_close(model(x)[2:3], model(x[2:3]))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_recurrent_variants(cell):
    for bidirectional in (False, True):
        m = build_model(
            cell, {"num_layers": 3, "bidirectional": bidirectional, "hidden_size": 16}, (7, 3), 2
        )
        assert isinstance(m.body.rnn, getattr(torch.nn, cell.upper()))
        assert m.body.rnn.num_layers == 3 and m.body.rnn.bidirectional == bidirectional
        assert m.eval()(torch.randn(2, 11, 3)).shape == (2, 2)  # any sequence length


def test_rnn_relu_nonlinearity():
    m = build_model("rnn", {"nonlinearity": "relu"}, (4, 2), 2)
    assert m.body.rnn.nonlinearity == "relu"


def test_regression_output_in_target_units():
    m = build_model("mlp", {"batch_norm": False, "dropout": 0.0}, (3,), 1, task="regression").eval()
    x = torch.randn(4, 3)
    base = m(x)
    m.target_mean.fill_(100.0)
    m.target_std.fill_(2.0)
    torch.testing.assert_close(m(x), base * 2 + 100)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("transformer", {}, (4,), 2),
            "unknown model 'transformer'; valid: mlp, cnn, rnn, lstm, gru",
        ),
        (("mlp", {"activation": "swish"}, (4,), 2), "valid: relu, sigmoid, tanh, gelu"),
        (("mlp", {"widths": [3]}, (4,), 2), "unknown MLPConfig field(s) widths; valid:"),
        (("mlp", {"dropout": 1.5}, (4,), 2), "dropout must be in [0, 1)"),
        (("mlp", {"hidden": [0]}, (4,), 2), "hidden must be positive integers"),
        (("cnn", {}, (30,), 2), "cnn needs inputs shaped (C, H, W)"),
        (("cnn", {"kernel_size": 4}, (1, 8, 8), 2), "kernel_size must be a positive odd integer"),
        (("lstm", {}, (30,), 2), "lstm needs inputs shaped (T, F)"),
        (("lstm", {"cell": "gru"}, (8, 8), 2), "model 'lstm' cannot take cell='gru'"),
        (("rnn", {"nonlinearity": "sigmoid"}, (8, 8), 2), "nonlinearity must be tanh or relu"),
        (("mlp", {}, (4,), 0), "num_outputs must be a positive integer"),
    ],
)
def test_registry_errors_name_the_problem(args, message):
    with pytest.raises(ValueError) as e:
        build_model(*args)
    assert message in str(e.value)


def test_select_and_pca_only_for_mlp():
    with pytest.raises(ValueError, match="only mlp"):
        build_model("cnn", {}, (1, 8, 8), 2, preprocess={"pca": 4})
    m = build_model("mlp", {}, (10,), 2, preprocess={"select_k": 6, "pca": 3})
    assert m.preprocess.output_shape == (3,)
    assert m.body.net[1].in_features == 3


def test_recurrent_refuses_per_element_standardization():
    with pytest.raises(ValueError, match="standardize per 'feature'"):
        build_model("gru", {}, (8, 3), 2, preprocess={"standardize": "element"})
    assert build_model("gru", {}, (8, 3), 2).preprocess.cfg.standardize == "feature"
    assert build_model("cnn", {}, (1, 8, 8), 2).preprocess.cfg.standardize == "channel"
