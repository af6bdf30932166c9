"""Tests of course_utils.reference.functional (NumPy) against torch.nn.functional.

float64: max abs error <= 1e-10 against torch (forward and backward).

float32: the reference computes in float64, so it is compared with torch run in float64 on
the same float32 data: max abs error <= 1e-5 * max(1, max |value|). Against torch's float32
kernels the bound is torch's own float32 error plus that: torch rounds in float32, which for
ill-conditioned draws (two nearly equal values in a group, 1 / sqrt(eps) = 316 when a group
has one element, large offsets) is larger than 1e-5 by itself.

Backward is also checked against central differences of the NumPy forward itself.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_utils.reference import functional as R

torch.set_num_threads(1)

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: no flaky CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def rand(rng, shape, dtype, loc=0.0, scale=1.0):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def T(a, dtype=None, requires_grad=False):
    """NumPy -> torch (a copy, optionally cast), None stays None."""
    if a is None:
        return None
    t = torch.tensor(np.array(a))
    if dtype is not None:
        t = t.to(dtype)
    return t.requires_grad_(requires_grad)


def assert_close(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.size:
        err = np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))
        assert err <= tol, f"max abs error {err:.3e} > {tol:.1e}"


def _maxabs(a):
    a = np.asarray(a, dtype=np.float64)
    return float(np.max(np.abs(a))) if a.size else 0.0


def compare_with_torch(ours: dict, run_torch, dtype):
    """Compare the reference's results with ``run_torch(torch_dtype) -> dict``.

    float64: <= 1e-10. float32: <= 1e-5 (relative to values above 1) against torch in
    float64 on the same data, and against torch's float32 kernels within their own error.
    """
    if dtype == np.float64:
        expected = run_torch(torch.float64)
        for key, value in ours.items():
            assert value.dtype == np.float64, key
            assert_close(value, expected[key], 1e-10)
        return
    exact, torch32 = run_torch(torch.float64), run_torch(torch.float32)
    for key, value in ours.items():
        assert value.dtype == dtype, key
        tol = 1e-5 * max(1.0, _maxabs(exact[key]))
        assert_close(value, exact[key], tol)
        torch_err = _maxabs(torch32[key] - exact[key])
        assert_close(value, torch32[key], torch_err + tol)


def torch_forward_backward(fn, x, params, grad_out, tdtype):
    """``fn(x, *params)`` and the gradients of ``sum(grad_out * fn)`` by torch.autograd."""
    tx = T(x, tdtype, requires_grad=True)
    tp = [T(p, tdtype, requires_grad=True) for p in params]
    y = fn(tx, *tp)
    y.backward(T(grad_out, tdtype))
    out = {"y": y.detach().numpy(), "gx": tx.grad.numpy()}
    out.update({f"g{i}": p.grad.numpy() for i, p in enumerate(tp)})
    return out


def numerical_grad(f, x, h=1e-6):
    """Central differences of the scalar function f at the float64 array x."""
    x = x.astype(np.float64).copy()
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f(x)
        flat[i] = old - h
        down = f(x)
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return grad


@st.composite
def nc_shapes(draw, min_spatial=0, max_spatial=2, max_n=5, max_c=5):
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    spatial = draw(st.lists(st.integers(1, 4), min_size=min_spatial, max_size=max_spatial))
    return (n, c, *spatial)


def draw_data(data, shape, dtype):
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    loc = data.draw(st.floats(-3, 3), label="loc")
    scale = data.draw(st.floats(0.5, 4), label="scale")
    return rng, rand(rng, shape, dtype, loc, scale)


def maybe(data, rng, shape, dtype, label, loc=0.0):
    if data.draw(st.booleans(), label=label):
        return rand(rng, shape, dtype, loc, 1.0)
    return None


# --------------------------------------------------------------------------------------
# batch norm
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_batch_norm_training_matches_torch(dtype, data):
    shape = data.draw(nc_shapes().filter(lambda s: s[0] * int(np.prod(s[2:])) > 1), "shape")
    rng, x = draw_data(data, shape, dtype)
    c = shape[1]
    w = maybe(data, rng, (c,), dtype, "weight", loc=1.0)
    b = maybe(data, rng, (c,), dtype, "bias")
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]), "eps")
    momentum = data.draw(st.floats(0.0, 1.0), "momentum")
    track = data.draw(st.booleans(), "running stats")
    rm0 = rand(rng, (c,), dtype) if track else None
    rv0 = (rng.random(c) + 0.5).astype(dtype) if track else None
    g = rand(rng, shape, dtype)

    def run_torch(td):
        trm, trv = T(rm0, td), T(rv0, td)
        y = F.batch_norm(T(x, td), trm, trv, T(w, td), T(b, td), True, momentum, eps)
        # gradients as if weight (ones) and bias (zeros) were present
        wp = np.ones(c, dtype) if w is None else w
        bp = np.zeros(c, dtype) if b is None else b
        out = torch_forward_backward(
            lambda t, tw, tb: F.batch_norm(t, None, None, tw, tb, True, 0.1, eps),
            x,
            [wp, bp],
            g,
            td,
        )
        out["y"] = y.numpy()
        if track:
            out.update(rm=trm.numpy(), rv=trv.numpy())
        return out

    rm = None if rm0 is None else rm0.copy()
    rv = None if rv0 is None else rv0.copy()
    ours = {"y": R.batch_norm(x, rm, rv, w, b, training=True, momentum=momentum, eps=eps)}
    if track:
        ours.update(rm=rm, rv=rv)
    for backward in (R.batch_norm_backward, R.batch_norm_backward_graph):
        ours["gx"], ours["g0"], ours["g1"] = backward(g, x, w, eps=eps)
        compare_with_torch(ours, run_torch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_batch_norm_eval_matches_torch(dtype, data):
    shape = data.draw(nc_shapes(), "shape")
    rng, x = draw_data(data, shape, dtype)
    c = shape[1]
    w = maybe(data, rng, (c,), dtype, "weight", loc=1.0)
    b = maybe(data, rng, (c,), dtype, "bias")
    rm = rand(rng, (c,), dtype)
    rv = (rng.random(c) + 0.5).astype(dtype)
    rm0, rv0 = rm.copy(), rv.copy()

    def run_torch(td):
        y = F.batch_norm(T(x, td), T(rm0, td), T(rv0, td), T(w, td), T(b, td), training=False)
        return {"y": y.numpy()}

    compare_with_torch({"y": R.batch_norm(x, rm, rv, w, b, training=False)}, run_torch, dtype)
    np.testing.assert_array_equal(rm, rm0)  # eval never touches the statistics
    np.testing.assert_array_equal(rv, rv0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0, 0.37])
def test_batch_norm_running_stats_over_steps(dtype, momentum):
    rng = np.random.default_rng(0)
    c = 3
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    trm, trv = torch.zeros(c, dtype=T(rm).dtype), torch.ones(c, dtype=T(rv).dtype)
    for step in range(3):
        x = rand(rng, (5, c, 4), dtype, loc=step + 1.0, scale=2.0)
        y = R.batch_norm(x, rm, rv, training=True, momentum=momentum)
        ty = F.batch_norm(T(x), trm, trv, training=True, momentum=momentum)
        assert_close(y, ty.numpy(), TOL[dtype])
    assert_close(rm, trm.numpy(), TOL[dtype])
    assert_close(rv, trv.numpy(), TOL[dtype])
    if momentum == 0.0:
        np.testing.assert_array_equal(rm, np.zeros(c))
        np.testing.assert_array_equal(rv, np.ones(c))
    else:
        assert np.all(rm > 0.1)
    # eval with the accumulated statistics
    x = rand(rng, (4, c, 4), dtype)
    assert_close(R.batch_norm(x, rm, rv), F.batch_norm(T(x), trm, trv).numpy(), TOL[dtype])


def test_batch_norm_running_var_is_unbiased():
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    rm, rv = np.zeros(1), np.ones(1)
    R.batch_norm(x, rm, rv, training=True, momentum=1.0)
    assert rm[0] == pytest.approx(3.0)
    assert rv[0] == pytest.approx(np.var(x, ddof=1))  # 14/3, not the biased 3.5


def test_batch_norm_sum_of_output_has_zero_gradient():
    rng = np.random.default_rng(1)
    x = rand(rng, (6, 3, 5), np.float64, loc=2.0, scale=3.0)
    w = rand(rng, (3,), np.float64)
    gx, gw, gb = R.batch_norm_backward(np.ones_like(x), x, w)
    assert np.max(np.abs(gx)) < 1e-12
    assert np.max(np.abs(gw)) < 1e-10  # sum of xhat is 0 too
    np.testing.assert_allclose(gb, np.full(3, 30.0))
    gx2, _, _ = R.batch_norm_backward_graph(np.ones_like(x), x, w)
    assert np.max(np.abs(gx2)) < 1e-12
    # and a non-constant upstream gradient does reach x
    gx3, _, _ = R.batch_norm_backward(x**2, x, w)
    assert np.max(np.abs(gx3)) > 1e-3


# --------------------------------------------------------------------------------------
# layer norm, group norm, instance norm, rms norm
# --------------------------------------------------------------------------------------


@st.composite
def trailing_shapes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    k = draw(st.integers(1, len(shape)))
    return shape, shape[len(shape) - k :]


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_layer_norm_matches_torch(dtype, data):
    shape, ns = data.draw(trailing_shapes(), "shapes")
    rng, x = draw_data(data, shape, dtype)
    w = maybe(data, rng, ns, dtype, "weight", loc=1.0)
    b = maybe(data, rng, ns, dtype, "bias")
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]), "eps")
    ns_arg = ns[0] if len(ns) == 1 and data.draw(st.booleans(), "int shape") else list(ns)
    g = rand(rng, shape, dtype)
    wp = np.ones(ns, dtype) if w is None else w
    bp = np.zeros(ns, dtype) if b is None else b

    def run_torch(td):
        out = torch_forward_backward(
            lambda t, tw, tb: F.layer_norm(t, ns, tw, tb, eps), x, [wp, bp], g, td
        )
        out["y"] = F.layer_norm(T(x, td), ns, T(w, td), T(b, td), eps).numpy()
        return out

    ours = {"y": R.layer_norm(x, ns_arg, w, b, eps)}
    ours["gx"], ours["g0"], ours["g1"] = R.layer_norm_backward(g, x, ns_arg, w, eps)
    assert ours["g0"].shape == ours["g1"].shape == ns
    compare_with_torch(ours, run_torch, dtype)


@st.composite
def group_norm_cases(draw):
    n = draw(st.integers(1, 4))
    g = draw(st.integers(1, 4))
    c = g * draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    shape = (n, c, *spatial)
    if (n * c // g) * int(np.prod(spatial)) == 1:  # torch's "1 value per channel" check
        shape = (n + 1, c, *spatial)
    return shape, g


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_group_norm_matches_torch(dtype, data):
    shape, groups = data.draw(group_norm_cases(), "case")
    rng, x = draw_data(data, shape, dtype)
    c = shape[1]
    w = maybe(data, rng, (c,), dtype, "weight", loc=1.0)
    b = maybe(data, rng, (c,), dtype, "bias")
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]), "eps")
    g = rand(rng, shape, dtype)
    wp = np.ones(c, dtype) if w is None else w
    bp = np.zeros(c, dtype) if b is None else b

    def run_torch(td):
        out = torch_forward_backward(
            lambda t, tw, tb: F.group_norm(t, groups, tw, tb, eps), x, [wp, bp], g, td
        )
        out["y"] = F.group_norm(T(x, td), groups, T(w, td), T(b, td), eps).numpy()
        return out

    ours = {"y": R.group_norm(x, groups, w, b, eps)}
    ours["gx"], ours["g0"], ours["g1"] = R.group_norm_backward(g, x, groups, w, eps)
    compare_with_torch(ours, run_torch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_instance_norm_matches_torch(dtype, data):
    shape = data.draw(nc_shapes(min_spatial=1).filter(lambda s: int(np.prod(s[2:])) > 1), "shape")
    rng, x = draw_data(data, shape, dtype)
    c = shape[1]
    w = maybe(data, rng, (c,), dtype, "weight", loc=1.0)
    b = maybe(data, rng, (c,), dtype, "bias")
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]), "eps")
    momentum = data.draw(st.floats(0.0, 1.0), "momentum")
    track = data.draw(st.booleans(), "running stats")
    use_input_stats = data.draw(st.booleans(), "use_input_stats") if track else True
    rm0 = rand(rng, (c,), dtype) if track else None
    rv0 = (rng.random(c) + 0.5).astype(dtype) if track else None
    g = rand(rng, shape, dtype)
    wp = np.ones(c, dtype) if w is None else w
    bp = np.zeros(c, dtype) if b is None else b

    def run_torch(td):
        out = torch_forward_backward(
            lambda t, tw, tb: F.instance_norm(t, weight=tw, bias=tb, eps=eps), x, [wp, bp], g, td
        )
        trm, trv = T(rm0, td), T(rv0, td)
        y = F.instance_norm(T(x, td), trm, trv, T(w, td), T(b, td), use_input_stats, momentum, eps)
        out["y"] = y.numpy()
        if track:
            out.update(rm=trm.numpy(), rv=trv.numpy())
        return out

    rm = None if rm0 is None else rm0.copy()
    rv = None if rv0 is None else rv0.copy()
    ours = {"y": R.instance_norm(x, rm, rv, w, b, use_input_stats, momentum, eps)}
    if track:
        ours.update(rm=rm, rv=rv)
    ours["gx"], ours["g0"], ours["g1"] = R.instance_norm_backward(g, x, w, eps)
    compare_with_torch(ours, run_torch, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_rms_norm_matches_torch(dtype, data):
    shape, ns = data.draw(trailing_shapes(), "shapes")
    rng, x = draw_data(data, shape, dtype)
    w = maybe(data, rng, ns, dtype, "weight", loc=1.0)
    eps = data.draw(st.sampled_from([None, 1e-6, 1e-3, 0.5]), "eps")
    g = rand(rng, shape, dtype)
    wp = np.ones(ns, dtype) if w is None else w

    def run_torch(td):
        if eps is None and td == torch.float64 and dtype == np.float32:
            eps_t = float(np.finfo(np.float32).eps)  # the float32 computation's eps
        else:
            eps_t = eps
        out = torch_forward_backward(lambda t, tw: F.rms_norm(t, ns, tw, eps_t), x, [wp], g, td)
        out["y"] = F.rms_norm(T(x, td), ns, T(w, td), eps_t).numpy()
        return out

    ours = {"y": R.rms_norm(x, list(ns), w, eps)}
    ours["gx"], ours["g0"] = R.rms_norm_backward(g, x, ns, w, eps)
    assert ours["g0"].shape == ns
    compare_with_torch(ours, run_torch, dtype)


# --------------------------------------------------------------------------------------
# backward against central differences of the NumPy forward (independent of torch)
# --------------------------------------------------------------------------------------

NUMERIC_CASES = {
    "batch_norm (N, C)": (
        (4, 3),
        (3,),
        lambda x, w, b: R.batch_norm(x, None, None, w, b, training=True),
        lambda g, x, w: R.batch_norm_backward(g, x, w),
    ),
    "batch_norm graph (N, C, H, W)": (
        (2, 3, 2, 2),
        (3,),
        lambda x, w, b: R.batch_norm(x, None, None, w, b, training=True, eps=1e-3),
        lambda g, x, w: R.batch_norm_backward_graph(g, x, w, eps=1e-3),
    ),
    "layer_norm": (
        (3, 2, 4),
        (2, 4),
        lambda x, w, b: R.layer_norm(x, (2, 4), w, b),
        lambda g, x, w: R.layer_norm_backward(g, x, (2, 4), w),
    ),
    "group_norm": (
        (2, 4, 3),
        (4,),
        lambda x, w, b: R.group_norm(x, 2, w, b),
        lambda g, x, w: R.group_norm_backward(g, x, 2, w),
    ),
    "instance_norm": (
        (2, 3, 4),
        (3,),
        lambda x, w, b: R.instance_norm(x, weight=w, bias=b),
        lambda g, x, w: R.instance_norm_backward(g, x, w),
    ),
    "rms_norm": (
        (3, 5),
        (5,),
        lambda x, w, b: R.rms_norm(x, 5, w),
        lambda g, x, w: R.rms_norm_backward(g, x, 5, w) + (None,),
    ),
}


@pytest.mark.parametrize("name", list(NUMERIC_CASES))
def test_backward_matches_central_differences(name):
    shape, pshape, forward, backward = NUMERIC_CASES[name]
    rng = np.random.default_rng(7)
    x = rand(rng, shape, np.float64, loc=0.5, scale=2.0)
    w = rand(rng, pshape, np.float64, loc=1.0)
    b = rand(rng, pshape, np.float64)
    g = rand(rng, shape, np.float64)
    gx, gw, gb = backward(g, x, w)

    def loss(x_, w_, b_):
        return float(np.sum(g * forward(x_, w_, b_)))

    assert_close(gx, numerical_grad(lambda v: loss(v, w, b), x), 1e-6)
    assert_close(gw, numerical_grad(lambda v: loss(x, v, b), w), 1e-6)
    if gb is not None:
        assert_close(gb, numerical_grad(lambda v: loss(x, w, v), b), 1e-6)


# --------------------------------------------------------------------------------------
# identities, numerics, dtypes, edge cases
# --------------------------------------------------------------------------------------


def test_group_norm_special_cases_equal_layer_and_instance_norm():
    rng = np.random.default_rng(3)
    x = rand(rng, (3, 4, 5, 2), np.float64, loc=1.0, scale=2.0)
    g = rand(rng, x.shape, np.float64)
    assert_close(R.group_norm(x, 1), R.layer_norm(x, x.shape[1:]), 1e-12)
    assert_close(R.group_norm(x, 4), R.instance_norm(x), 1e-12)
    assert_close(
        R.group_norm_backward(g, x, 1)[0], R.layer_norm_backward(g, x, (4, 5, 2))[0], 1e-12
    )
    assert_close(R.group_norm_backward(g, x, 4)[0], R.instance_norm_backward(g, x)[0], 1e-12)
    # and the two are genuinely different normalizations
    assert np.max(np.abs(R.group_norm(x, 1) - R.group_norm(x, 4))) > 0.1


@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_stable_variance_float32(offset):
    """Large mean, unit spread, float32: the two-pass variance is exact enough.

    The reference computes in float64 and agrees with torch's float64 result on the same
    float32 data to 1e-5. torch's own float32 kernels are off by a few ulps of the offset
    (~1e-3 at 1e4), so against them the bound is torch's own error plus 1e-5.
    """
    rng = np.random.default_rng(11)
    x = (offset + rng.standard_normal((64, 3, 4, 4))).astype(np.float32)
    t32, t64 = torch.from_numpy(x), torch.from_numpy(x.astype(np.float64))
    cases = [
        (
            R.batch_norm(x, None, None, training=True),
            lambda t: F.batch_norm(t, None, None, None, None, True),
        ),
        (R.layer_norm(x, (3, 4, 4)), lambda t: F.layer_norm(t, (3, 4, 4))),
        (R.group_norm(x, 3), lambda t: F.group_norm(t, 3)),
        (R.instance_norm(x), lambda t: F.instance_norm(t)),
    ]
    for y, fn in cases:
        assert y.dtype == np.float32
        exact, torch32 = fn(t64).numpy(), fn(t32).numpy()
        assert_close(y, exact, 1e-5)
        torch_err = np.max(np.abs(torch32 - exact))
        assert_close(y, torch32, torch_err + 1e-5)
        assert torch_err < 64 * offset * np.finfo(np.float32).eps  # a few ulps of offset
        assert abs(float(np.std(y.astype(np.float64))) - 1.0) < 1e-3

    # the naive one-pass formula collapses on the same data: this is what is tested for
    xc = x[:, 0].reshape(-1)
    naive = np.mean(xc * xc, dtype=np.float32) - np.mean(xc, dtype=np.float32) ** 2
    assert abs(float(naive) - float(np.var(xc.astype(np.float64)))) > 0.5


def test_stable_variance_four_values():
    x = np.array([[10000.0], [10001.0], [10002.0], [10003.0]], dtype=np.float32)
    y = R.batch_norm(x, None, None, training=True, eps=1e-12)
    expected = (np.arange(4) - 1.5) / np.sqrt(1.25)
    assert_close(y[:, 0], expected, 1e-6)


def test_sum_and_constant_input():
    x = np.full((4, 3), 2.5)
    y = R.batch_norm(x, None, None, training=True)
    np.testing.assert_array_equal(y, np.zeros_like(x))  # zero variance -> eps only
    np.testing.assert_array_equal(R.layer_norm(np.ones((3, 1)), 1), np.zeros((3, 1)))


@pytest.mark.parametrize(
    "dtype, expected_eps",
    [
        (np.float64, np.finfo(np.float64).eps),
        (np.float32, np.finfo(np.float32).eps),
        (np.float16, np.finfo(np.float32).eps),
    ],
)
def test_rms_norm_default_eps_per_dtype(dtype, expected_eps):
    x = np.full((2, 4), 1e-4, dtype=dtype)
    y = R.rms_norm(x, 4)
    assert y.dtype == dtype
    xd = x.astype(np.float64)
    expected = xd / np.sqrt(np.mean(xd**2, axis=-1, keepdims=True) + expected_eps)
    tol = 1e-3 if dtype == np.float16 else 1e-6
    assert_close(y, expected, tol)
    assert_close(y, F.rms_norm(torch.from_numpy(x), (4,)).numpy(), tol)
    # float64 keeps ~1, float32's eps (1.2e-7 >> 1e-8) pulls the output to ~0.28
    assert (y[0, 0] > 0.99) == (dtype == np.float64)


def test_array_like_and_dtypes():
    x = [[1.0, 2.0, 4.0], [3.0, 0.0, 1.0]]
    y = R.layer_norm(x, 3)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    assert_close(y, F.layer_norm(torch.tensor(x, dtype=torch.float64), (3,)).numpy(), 1e-12)
    y_int = R.batch_norm(np.array([[1, 2], [3, 5]]), None, None, training=True)
    assert y_int.dtype == np.float64
    y32 = R.group_norm(np.array(x, dtype=np.float32), 1, weight=[1.0, 2.0, 3.0])
    assert y32.dtype == np.float32
    for fn in (
        lambda a: R.batch_norm_backward(np.ones_like(a), a),
        lambda a: R.instance_norm_backward(np.ones((1, 2, 3)), a.reshape(1, 2, 3)),
        lambda a: R.rms_norm_backward(np.ones_like(a), a, 3),
    ):
        out = fn(np.array(x, dtype=np.float32))
        assert all(o.dtype == np.float32 for o in out)


def test_empty_batch():
    for dtype in DTYPES:
        x = np.zeros((0, 3), dtype=dtype)
        rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
        for training in (True, False):
            y = R.batch_norm(x, rm, rv, np.ones(3), np.zeros(3), training=training)
            assert y.shape == (0, 3) and y.dtype == dtype
        np.testing.assert_array_equal(rm, 0.0)  # torch leaves them unchanged too
        np.testing.assert_array_equal(rv, 1.0)
        assert R.batch_norm(x, None, None, training=False).shape == (0, 3)
        assert R.layer_norm(x, 3).shape == (0, 3)
        assert R.group_norm(x, 3).shape == (0, 3)
        assert R.rms_norm(x, 3).shape == (0, 3)
        assert R.instance_norm(np.zeros((0, 3, 4), dtype)).shape == (0, 3, 4)
        gx, gw, gb = R.batch_norm_backward(x, x)
        assert gx.shape == (0, 3) and gw.tolist() == [0.0] * 3 and gb.shape == (3,)
        gx, gw, gb = R.layer_norm_backward(x, x, 3)
        assert gx.shape == (0, 3) and gw.shape == (3,)
    tx = torch.zeros(0, 3, requires_grad=True)
    tw = torch.ones(3, requires_grad=True)
    F.batch_norm(tx, None, None, tw, None, training=True).sum().backward()
    np.testing.assert_array_equal(
        R.batch_norm_backward(np.zeros((0, 3)), np.zeros((0, 3)))[1], tw.grad.numpy()
    )


def test_group_of_one_element_gives_zeros():
    x = np.random.default_rng(0).standard_normal((2, 4, 1, 1))
    np.testing.assert_array_equal(R.group_norm(x, 4), np.zeros_like(x))
    assert_close(R.group_norm(x, 4), F.group_norm(torch.from_numpy(x), 4).numpy(), 0)


def test_batch_norm_size_one_allowed_when_spatial():
    x = np.random.default_rng(0).standard_normal((1, 3, 2, 2))
    y = R.batch_norm(x, None, None, training=True)
    assert_close(y, F.batch_norm(torch.from_numpy(x), None, None, training=True).numpy(), 1e-12)
    # N=1 in evaluation mode with running statistics is fine as well
    assert R.batch_norm(x[:, :, 0, 0], np.zeros(3), np.ones(3)).shape == (1, 3)


def test_running_stats_must_be_updatable_arrays():
    x = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        R.batch_norm(x, [0.0, 0.0, 0.0], np.ones(3), training=True)
    # in evaluation mode lists are fine: nothing is written
    y = R.batch_norm(x, [0.0] * 3, [1.0] * 3)
    assert_close(y, x / np.sqrt(1 + 1e-5), 1e-12)


# --------------------------------------------------------------------------------------
# errors: same type and message as torch
# --------------------------------------------------------------------------------------


def _x(*shape):
    return np.random.default_rng(0).standard_normal(shape)


def _t(*shape):
    return torch.from_numpy(_x(*shape))


ERROR_CASES = [
    (
        lambda: R.batch_norm(_x(1, 3), None, None, training=True),
        lambda: F.batch_norm(_t(1, 3), None, None, training=True),
        ValueError,
        "Expected more than 1 value per channel when training, got input size torch.Size([1, 3])",
    ),
    (
        lambda: R.batch_norm(_x(1, 3, 1, 1), None, None, training=True),
        lambda: F.batch_norm(_t(1, 3, 1, 1), None, None, training=True),
        ValueError,
        "Expected more than 1 value per channel when training, got input size "
        "torch.Size([1, 3, 1, 1])",
    ),
    (
        lambda: R.batch_norm(_x(2, 3), np.zeros(4), np.ones(4), training=True),
        lambda: F.batch_norm(
            _t(2, 3),
            torch.zeros(4, dtype=torch.float64),
            torch.ones(4, dtype=torch.float64),
            training=True,
        ),
        RuntimeError,
        "running_mean should contain 3 elements not 4",
    ),
    (
        lambda: R.batch_norm(_x(2, 4), np.zeros(3), np.ones(3)),
        lambda: F.batch_norm(
            _t(2, 4), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        ),
        RuntimeError,
        "running_mean should contain 4 elements not 3",
    ),
    (
        lambda: R.batch_norm(_x(2, 4), np.zeros(4), np.ones(3)),
        lambda: F.batch_norm(
            _t(2, 4), torch.zeros(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        ),
        RuntimeError,
        "running_var should contain 4 elements not 3",
    ),
    (
        lambda: R.batch_norm(_x(2, 4), None, None, np.ones(3), training=True),
        lambda: F.batch_norm(
            _t(2, 4), None, None, torch.ones(3, dtype=torch.float64), training=True
        ),
        RuntimeError,
        "weight should contain 4 elements not 3",
    ),
    (
        lambda: R.batch_norm(_x(2, 4), None, None, None, np.ones(5), training=True),
        lambda: F.batch_norm(
            _t(2, 4), None, None, None, torch.ones(5, dtype=torch.float64), training=True
        ),
        RuntimeError,
        "bias should contain 4 elements not 5",
    ),
    (
        lambda: R.batch_norm(_x(2, 3), None, None, training=False),
        lambda: F.batch_norm(_t(2, 3), None, None, training=False),
        RuntimeError,
        "running_mean must be defined in evaluation mode",
    ),
    (
        lambda: R.batch_norm(_x(2, 3), np.zeros(3), None),
        lambda: F.batch_norm(_t(2, 3), torch.zeros(3, dtype=torch.float64), None),
        RuntimeError,
        "running_var must be defined in evaluation mode",
    ),
    (
        lambda: R.batch_norm(_x(2, 3), None, np.ones(3), training=True),
        lambda: F.batch_norm(_t(2, 3), None, torch.ones(3, dtype=torch.float64), training=True),
        ValueError,
        "running_mean and running_var must either both be None or neither be None",
    ),
    (
        lambda: R.batch_norm(_x(2, 3), None, None, training=True, eps=0.0),
        lambda: F.batch_norm(_t(2, 3), None, None, training=True, eps=0.0),
        ValueError,
        "batch_norm eps must be positive during training, but got 0.0",
    ),
    (
        lambda: R.batch_norm(_x(2, 3), np.zeros(3), np.ones(3), eps=-1.0),
        lambda: F.batch_norm(
            _t(2, 3),
            torch.zeros(3, dtype=torch.float64),
            torch.ones(3, dtype=torch.float64),
            eps=-1.0,
        ),
        ValueError,
        "batch_norm eps must be non-negative, but got -1.0",
    ),
    (
        lambda: R.batch_norm(_x(3), None, None, training=True),
        lambda: F.batch_norm(_t(3), None, None, training=True),
        IndexError,
        "Dimension out of range (expected to be in range of [-1, 0], but got 1)",
    ),
    (
        lambda: R.layer_norm(_x(2, 4), 5),
        lambda: F.layer_norm(_t(2, 4), (5,)),
        RuntimeError,
        "Given normalized_shape=[5], expected input with shape [*, 5], but got input of size[2, 4]",
    ),
    (
        lambda: R.layer_norm(_x(3), (1, 3)),
        lambda: F.layer_norm(_t(3), (1, 3)),
        RuntimeError,
        "Given normalized_shape=[1, 3], expected input with shape [*, 1, 3], but got input "
        "of size[3]",
    ),
    (
        lambda: R.layer_norm(_x(2, 4), 4, np.ones(3)),
        lambda: F.layer_norm(_t(2, 4), (4,), torch.ones(3, dtype=torch.float64)),
        RuntimeError,
        "Expected weight to be of same shape as normalized_shape, but got weight of shape [3] "
        "and normalized_shape = [4]",
    ),
    (
        lambda: R.layer_norm(_x(2, 4), 4, None, np.ones((2, 2))),
        lambda: F.layer_norm(_t(2, 4), (4,), None, torch.ones(2, 2, dtype=torch.float64)),
        RuntimeError,
        "Expected bias to be of same shape as normalized_shape, but got bias of shape [2, 2] "
        "and normalized_shape = [4]",
    ),
    (
        lambda: R.layer_norm(_x(2, 4), ()),
        lambda: F.layer_norm(_t(2, 4), ()),
        RuntimeError,
        "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least "
        "one element, but got normalized_shape = []",
    ),
    (
        lambda: R.group_norm(_x(2, 4, 3), 3),
        lambda: F.group_norm(_t(2, 4, 3), 3),
        RuntimeError,
        "Expected number of channels in input to be divisible by num_groups, but got input "
        "of shape [2, 4, 3] and num_groups=3",
    ),
    (
        lambda: R.group_norm(_x(1, 4, 1, 1), 4),
        lambda: F.group_norm(_t(1, 4, 1, 1), 4),
        ValueError,
        "Expected more than 1 value per channel when training, got input size [1, 4, 1, 1]",
    ),
    (
        lambda: R.group_norm(_x(2, 4, 3), 2, np.ones(3)),
        lambda: F.group_norm(_t(2, 4, 3), 2, torch.ones(3, dtype=torch.float64)),
        RuntimeError,
        "Expected weight to be a vector of size equal to the number of channels in input, "
        "but got weight of shape [3] and input of shape [2, 4, 3]",
    ),
    (
        lambda: R.group_norm(_x(4), 2),
        lambda: F.group_norm(_t(4), 2),
        RuntimeError,
        "Expected at least 2 dimensions for input tensor but received 1",
    ),
    (
        lambda: R.instance_norm(_x(2, 3, 1, 1)),
        lambda: F.instance_norm(_t(2, 3, 1, 1)),
        ValueError,
        "Expected more than 1 spatial element when training, got input size "
        "torch.Size([2, 3, 1, 1])",
    ),
    (
        lambda: R.instance_norm(_x(2, 3)),
        lambda: F.instance_norm(_t(2, 3)),
        ValueError,
        "Expected more than 1 spatial element when training, got input size torch.Size([2, 3])",
    ),
    (
        lambda: R.instance_norm(_x(2, 4, 5), use_input_stats=False),
        lambda: F.instance_norm(_t(2, 4, 5), use_input_stats=False),
        RuntimeError,
        "Expected running_mean and running_var to be defined when use_input_stats is false",
    ),
    (
        lambda: R.instance_norm(_x(2, 4, 5), np.zeros(3), np.ones(3)),
        lambda: F.instance_norm(
            _t(2, 4, 5), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        ),
        RuntimeError,
        "running_mean should contain 8 elements not 6",
    ),
    (
        lambda: R.instance_norm(_x(2, 4, 5), weight=np.ones(3)),
        lambda: F.instance_norm(_t(2, 4, 5), weight=torch.ones(3, dtype=torch.float64)),
        RuntimeError,
        "weight should contain 8 elements not 6",
    ),
    (
        lambda: R.instance_norm(_x(2, 4, 5), np.zeros(4), None),
        lambda: F.instance_norm(_t(2, 4, 5), torch.zeros(4, dtype=torch.float64), None),
        ValueError,
        "running_mean and running_var must either both be None or neither be None",
    ),
    (
        lambda: R.rms_norm(_x(2, 4), 5),
        lambda: F.rms_norm(_t(2, 4), (5,)),
        RuntimeError,
        "Given normalized_shape=[5], expected input with shape [*5], but got input of size[2, 4]",
    ),
    (
        lambda: R.rms_norm(_x(4), (1, 4)),
        lambda: F.rms_norm(_t(4), (1, 4)),
        ValueError,
        "Input tensor must have at least 2 dimensions, but got 1",
    ),
    (
        lambda: R.rms_norm(_x(2, 4), 4, np.ones(3)),
        lambda: F.rms_norm(_t(2, 4), (4,), torch.ones(3, dtype=torch.float64)),
        RuntimeError,
        "Expected weight to be of same shape as normalized_shape, but got weight of shape [3] "
        "and normalized_shape = [4]",
    ),
]


@pytest.mark.parametrize("case", range(len(ERROR_CASES)))
def test_errors_match_torch(case):
    ref_call, torch_call, exc, message = ERROR_CASES[case]
    with pytest.raises(exc) as torch_info:
        torch_call()
    assert str(torch_info.value) == message  # what torch 2.13 says
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        ref_call()


def test_backward_errors():
    with pytest.raises(ValueError, match=re.escape("got input size torch.Size([1, 3])")):
        R.batch_norm_backward(_x(1, 3), _x(1, 3))
    with pytest.raises(ValueError, match="grad_out has shape"):
        R.layer_norm_backward(_x(2, 3), _x(2, 4), 4)
    with pytest.raises(RuntimeError, match="divisible by num_groups"):
        R.group_norm_backward(_x(2, 4), _x(2, 4), 3)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        R.instance_norm_backward(_x(2, 3, 1), _x(2, 3, 1))


def test_group_norm_bias_message_names_the_bias_shape():
    # torch's message here prints the (undefined) weight's shape "[0]"; ours the bias's
    with pytest.raises(RuntimeError, match=re.escape("but got bias of shape [0]")):
        F.group_norm(_t(2, 4), 2, None, torch.ones(3))
    with pytest.raises(RuntimeError, match=re.escape("but got bias of shape [3] and input")):
        R.group_norm(_x(2, 4), 2, None, np.ones(3))
