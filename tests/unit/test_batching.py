"""The adaptive batcher: requests pile up while the model is busy, and each gets its own rows back."""

import asyncio
import time

import numpy as np
import pytest

from nnship.service.batching import AdaptiveBatcher, Overloaded


class Model:
    """A slow model that records the rows of every call; `coupled` mixes rows like dynamic int8."""

    def __init__(self, coupled=False, delay=0.004, fail_on=None):
        self.coupled, self.delay, self.fail_on, self.calls = coupled, delay, fail_on, []

    def __call__(self, x):
        self.calls.append(len(x))
        time.sleep(self.delay)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("kernel failure")
        return x * 2 - (x.max() if self.coupled else 0)


def requests(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(1, 4)), 3)).astype(np.float32) for _ in range(n)]


async def serve(batcher, xs):
    return await asyncio.gather(*(batcher(x) for x in xs), return_exceptions=True)


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    model, xs = Model(), requests(40)
    outs = asyncio.run(serve(AdaptiveBatcher(model, max_batch_size=16, max_latency_ms=10_000), xs))
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out, x * 2)
    assert len(model.calls) < 40 and max(model.calls) > 3  # batches formed
    assert max(model.calls) <= 16  # whole requests, never over max_batch_size


def test_batch_coupled_models_run_each_request_alone():
    xs = requests(30, seed=1)
    alone = [x * 2 - x.max() for x in xs]
    joined = asyncio.run(serve(AdaptiveBatcher(Model(coupled=True), 64, 10_000), xs))
    assert any(not np.array_equal(a, b) for a, b in zip(alone, joined, strict=True))
    model = Model(coupled=True)
    each = asyncio.run(serve(AdaptiveBatcher(model, 64, 10_000, concatenate=False), xs))
    for a, b in zip(alone, each, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.calls == [len(x) for x in xs]  # one call per request, in arrival order


@pytest.mark.parametrize("concatenate", [True, False])
def test_a_failing_call_fails_only_its_requests(concatenate):
    xs = requests(12, seed=2)
    xs[5][0, 0] = 99.0
    outs = asyncio.run(
        serve(AdaptiveBatcher(Model(fail_on=99.0), 64, 10_000, concatenate=concatenate), xs)
    )
    failed = [i for i, o in enumerate(outs) if isinstance(o, RuntimeError)]
    assert 5 in failed
    if not concatenate:
        assert failed == [5]  # run alone, the others are untouched
    # joined: the requests that shared the failed call fail with it (the service answers 500 each)
    ok = [i for i, o in enumerate(outs) if not isinstance(o, Exception)]
    assert len(ok) + len(failed) == len(xs)
    assert all(np.array_equal(outs[i], xs[i] * 2) for i in ok)


def test_requests_past_the_latency_budget_are_shed():
    model = Model(delay=0.05)
    outs = asyncio.run(
        serve(AdaptiveBatcher(model, max_batch_size=1, max_latency_ms=20), requests(6))
    )
    shed = [o for o in outs if isinstance(o, Overloaded)]
    assert shed and len(shed) + len(model.calls) == 6  # shed requests never reach the model


def test_the_consumer_outlives_a_model_that_returns_garbage():
    calls = []

    def broken_then_fine(x):
        calls.append(len(x))
        return None if len(calls) == 1 else x * 2  # the first answer cannot be split per request

    async def scenario():
        batcher = AdaptiveBatcher(broken_then_fine, 64, 10_000)
        first = await asyncio.wait_for(serve(batcher, requests(5)), 5)  # a dead consumer: timeout
        later = await asyncio.wait_for(batcher(np.ones((2, 3), np.float32)), 5)
        return first, later

    first, later = asyncio.run(scenario())
    assert all(isinstance(o, TypeError) for o in first)  # failed, not left hanging
    np.testing.assert_array_equal(later, np.full((2, 3), 2.0))


def test_batch_coupling_found_inside_subgraphs():
    from onnx import TensorProto, helper

    from nnship.onnxrt import batch_coupled_ops

    def branch(name):
        return helper.make_graph(
            [helper.make_node("DynamicQuantizeLinear", ["x"], [f"{name}_q", "s", "z"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_q", TensorProto.UINT8, None)],
        )

    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    out = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    node = helper.make_node(
        "If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("other")
    )
    model = helper.make_model(helper.make_graph([node], "g", [cond, x], [out]))
    assert batch_coupled_ops(model.SerializeToString()) == ["DynamicQuantizeLinear"]
    plain = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "g", [x], [out])
    )
    assert batch_coupled_ops(plain.SerializeToString()) == []


class WhereModel:
    """A model that records which thread ran each call and how many rows it got."""

    def __init__(self, delay=0.0):
        self.delay, self.threads, self.rows = delay, [], []

    def __call__(self, x):
        import threading

        self.threads.append(threading.current_thread().name)
        self.rows.append(len(x))
        time.sleep(self.delay)
        return x + 1


def test_a_fast_model_runs_on_the_loop_once_timed_and_still_batches():
    model = WhereModel()
    batcher = AdaptiveBatcher(model, max_batch_size=16, max_latency_ms=10_000, inline_max_ms=50)
    xs = [np.full((1, 3), i, np.float32) for i in range(8)]

    async def main():
        first = await batcher(xs[0])  # not timed yet: in the inference thread
        crowd = await asyncio.gather(*(batcher(x) for x in xs))  # timed fast: on the loop
        return [first, *crowd]

    outs = asyncio.run(main())
    for x, out in zip([xs[0], *xs], outs, strict=True):
        np.testing.assert_array_equal(out, x + 1)
    assert model.threads[0].startswith("nnship-infer")
    assert model.threads[1:] == ["MainThread"]  # one call for the eight requests
    assert model.rows == [1, 8]


def test_a_slow_model_never_runs_on_the_event_loop():
    model = WhereModel(delay=0.005)
    batcher = AdaptiveBatcher(model, max_batch_size=16, max_latency_ms=10_000, inline_max_ms=1)
    x = np.ones((1, 3), np.float32)

    async def main():
        for _ in range(3):
            await batcher(x)

    asyncio.run(main())
    assert len(model.threads) == 3
    assert all(t.startswith("nnship-infer") for t in model.threads)


class PerRowModel(WhereModel):
    """Takes `delay` seconds a row."""

    def __call__(self, x):
        self.delay = 0.0004 * len(x)
        return super().__call__(x)


def test_a_batch_larger_than_the_timed_one_is_not_run_on_the_loop():
    """0.4 ms a row under a 2 ms limit: one row runs on the loop once timed, sixteen (6.4 ms
    expected from the last call scaled by rows) go to the inference thread."""
    model = PerRowModel()
    batcher = AdaptiveBatcher(model, max_batch_size=64, max_latency_ms=10_000, inline_max_ms=2)

    async def main():
        await batcher(np.ones((1, 3), np.float32))  # not timed yet: the thread
        await batcher(np.ones((1, 3), np.float32))  # 0.4 ms: the loop
        await batcher(np.ones((16, 3), np.float32))  # 16 x 0.4 ms expected: the thread

    asyncio.run(main())
    assert model.rows == [1, 1, 16]
    assert [t.startswith("nnship-infer") for t in model.threads] == [True, False, True]
