"""Lesson 10 (deployment and scale): folding batch norm, synchronised batch norm over threads and
real gloo processes (results, errors, time limits, no leftover processes), the mixed-precision
experiment, and the two exercises (the answers pass visible and hidden cases; typical mistakes
get the specific verdict)."""

import copy
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from course_utils import make_cnn, make_mlp
from course_utils.answers.lesson10 import SyncBatchNormFunction, fold_bn
from course_utils.exercises import get_exercise, verify
from course_utils.experiments import deployment, distributed, mixed_precision, sync_bn

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures"))
import dist_ranks  # noqa: E402  (spawned processes import it from the same sys.path)

# ----------------------------------------------------------------------------------------------
# fold_bn and the folded model
# ----------------------------------------------------------------------------------------------


def _random_bn(bn, g):
    with torch.no_grad():
        bn.running_mean.uniform_(-3, 3, generator=g)
        bn.running_var.uniform_(0.05, 4, generator=g)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2, generator=g)
            bn.bias.normal_(generator=g)
    return bn.eval()


LAYERS = [
    (lambda: nn.Linear(7, 5), nn.BatchNorm1d, (6, 7)),
    (lambda: nn.Linear(7, 5, bias=False), nn.BatchNorm1d, (3, 7)),
    (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), nn.BatchNorm1d, (2, 4, 9)),
    (lambda: nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d, (2, 3, 7, 7)),
    (lambda: nn.Conv2d(6, 9, 3, stride=2, dilation=2, groups=3), nn.BatchNorm2d, (2, 6, 11, 11)),
    (
        lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="reflect"),
        nn.BatchNorm2d,
        (2, 4, 6, 6),
    ),
    (lambda: nn.Conv3d(2, 4, 2, bias=False), nn.BatchNorm3d, (2, 2, 4, 4, 4)),
]


@pytest.mark.parametrize("make_layer, bn_cls, shape", LAYERS)
@pytest.mark.parametrize("affine", [True, False])
def test_fold_bn_equals_the_pair_in_eval_mode_and_leaves_them_alone(
    make_layer, bn_cls, shape, affine
):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = make_layer()
    bn = _random_bn(bn_cls(layer.weight.shape[0], eps=1e-3, affine=affine), g)
    before = copy.deepcopy((layer.state_dict(), bn.state_dict()))
    folded = fold_bn(layer, bn)
    x = torch.randn(*shape, generator=g)
    with torch.no_grad():
        expected = bn(layer(x))
        got = folded(x)
    assert type(folded) is type(layer) and folded is not layer
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    for k, v in before[0].items():
        assert torch.equal(layer.state_dict()[k], v)
    for k, v in before[1].items():
        assert torch.equal(bn.state_dict()[k], v)
    if isinstance(layer, nn.Conv2d) and affine:  # the same numbers as torch's own helper
        ref = fuse_conv_bn_eval(layer.eval(), bn)
        assert torch.allclose(folded.weight, ref.weight, atol=1e-6)
        assert torch.allclose(folded.bias, ref.bias, atol=1e-6)


def test_fold_bn_refuses_what_cannot_be_folded():
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(TypeError, match="Linear or Conv"):
        fold_bn(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="channels"):
        fold_bn(nn.Linear(3, 4), nn.BatchNorm1d(5))


def test_fold_model_folds_every_pair_of_the_cnn_and_keeps_the_original():
    cnn = make_cnn(channels=(4, 8), norm="batch", seed=0)
    g = torch.Generator().manual_seed(1)
    for block in cnn.blocks:
        _random_bn(block.norm, g)
    cnn.eval()
    folded = deployment.fold_model(cnn)
    assert deployment.count_batch_norms(folded) == 0 and deployment.count_batch_norms(cnn) == 2
    x = torch.randn(5, 1, 28, 28, generator=g)
    with torch.no_grad():
        assert torch.allclose(folded(x), cnn(x), atol=1e-4)


def test_time_inference_interleaves_and_reports_every_sample():
    m = nn.Linear(4, 4)
    times = deployment.time_inference({"a": m, "b": m}, torch.randn(2, 4), repeats=5, number=2)
    assert set(times) == {"a", "b"} and all(len(t) == 5 and (t > 0).all() for t in times.values())
    assert deployment.median_ratio({"a": np.array([2.0]), "b": np.array([4.0])}, "a", "b") == 0.5


# ----------------------------------------------------------------------------------------------
# synchronised batch norm: the Function, the thread group, the module
# ----------------------------------------------------------------------------------------------


def _sync_vs_single(sizes, inner, dtype=torch.float64, seed=0, runner=distributed.run_threads):
    g = torch.Generator().manual_seed(seed)
    c = inner[0]
    xs = [torch.randn(n, *inner, generator=g, dtype=dtype) * 2 + 1 for n in sizes]
    gs = [torch.randn(n, *inner, generator=g, dtype=dtype) for n in sizes]
    w0 = torch.rand(c, generator=g, dtype=dtype) + 0.5
    b0 = torch.randn(c, generator=g, dtype=dtype)

    def rank_fn(rank, world, all_reduce):
        x = xs[rank].clone().requires_grad_(True)
        w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
        y = SyncBatchNormFunction.apply(x, w, b, rm, rv, 1e-5, 0.1, all_reduce)
        y.backward(gs[rank])
        return y.detach(), x.grad, w.grad, b.grad, rm, rv

    res = runner(rank_fn, len(sizes))
    bn = (nn.BatchNorm1d if len(inner) < 3 else nn.BatchNorm2d)(c).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(w0)
        bn.bias.copy_(b0)
    x = torch.cat(xs).requires_grad_(True)
    y = bn(x)
    y.backward(torch.cat(gs))
    return res, x, y, bn


@pytest.mark.parametrize(
    "sizes, inner", [((2, 2), (3,)), ((3, 1, 4), (2, 3, 3)), ((1, 5), (4, 6)), ((2, 3, 1, 2), (5,))]
)
def test_sync_function_equals_batch_norm_on_the_concatenated_batch(sizes, inner):
    res, x, y, bn = _sync_vs_single(sizes, inner)
    tol = dict(rtol=1e-9, atol=1e-10)
    assert torch.allclose(torch.cat([r[0] for r in res]), y.detach(), **tol)
    assert torch.allclose(torch.cat([r[1] for r in res]), x.grad, **tol)
    assert torch.allclose(sum(r[2] for r in res), bn.weight.grad, **tol)  # shares add up
    assert torch.allclose(sum(r[3] for r in res), bn.bias.grad, **tol)
    for r in res:
        assert torch.allclose(r[4], bn.running_mean, **tol)
        assert torch.allclose(r[5], bn.running_var, **tol)


def test_thread_group_reports_a_rank_that_calls_all_reduce_less_often_quickly():
    def uneven(rank, world, all_reduce):
        for _ in range(1 + rank):
            all_reduce(torch.ones(2))

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="equally often"):
        distributed.ThreadGroup(2, timeout=5.0).run(uneven)
    assert time.monotonic() - start < 2.0  # noticed when rank 0 returned, not at the timeout


def test_thread_group_raises_the_failing_ranks_own_error_and_checks_shapes():
    def fails(rank, world, all_reduce):
        if rank == 1:
            raise KeyError("mine")
        all_reduce(torch.ones(1))

    with pytest.raises(KeyError, match="mine"):
        distributed.run_threads(fails, 2)

    def shapes(rank, world, all_reduce):
        all_reduce(torch.ones(1 + rank))

    with pytest.raises(RuntimeError, match="different shapes"):
        distributed.run_threads(shapes, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        distributed.run_threads(lambda r, w, ar: ar([1.0]), 1)


def _no_threads(monkeypatch):
    """Starting a thread fails, as in the grader's sandbox."""

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)


@pytest.mark.parametrize(
    "sizes, inner", [((2, 2), (3,)), ((3, 1, 4), (2, 3, 3)), ((1, 5), (4, 6)), ((2, 3, 1, 2), (5,))]
)
def test_replay_group_equals_threads_without_starting_a_thread(sizes, inner, monkeypatch):
    threaded, x, y, bn = _sync_vs_single(sizes, inner)
    _no_threads(monkeypatch)
    replayed, *_ = _sync_vs_single(sizes, inner, runner=distributed.run_replayed)
    for a, b in zip(threaded, replayed):
        assert all(torch.equal(u, v) for u, v in zip(a, b))  # the same sums, bit for bit
    assert torch.allclose(torch.cat([r[1] for r in replayed]), x.grad, rtol=1e-9, atol=1e-10)


def test_replay_group_counts_calls_and_answers_every_rank_with_the_same_sums():
    def ranks(rank, world, all_reduce):
        seen = []
        for step in range(3):
            t = torch.full((2,), float(rank + 10 * step))
            all_reduce(t)
            seen.append(t.tolist())
        return seen

    group = distributed.ReplayGroup(3)
    out = group.run(ranks)
    assert out[0] == out[1] == out[2] == [[3.0, 3.0], [33.0, 33.0], [63.0, 63.0]]
    assert group.calls == [3, 3, 3] and group.bytes == [24, 24, 24]


def test_replay_group_gives_verdicts_not_hangs(monkeypatch):
    _no_threads(monkeypatch)

    def uneven(rank, world, all_reduce):
        for _ in range(1 + rank):
            all_reduce(torch.ones(2))

    with pytest.raises(RuntimeError, match="rank 0 returned after 1 all_reduce call while rank 1"):
        distributed.run_replayed(uneven, 2)

    def shapes(rank, world, all_reduce):
        all_reduce(torch.ones(1 + rank))

    with pytest.raises(RuntimeError, match="different shapes"):
        distributed.run_replayed(shapes, 2)

    def fails(rank, world, all_reduce):
        all_reduce(torch.ones(1))
        if rank == 1:
            raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        distributed.run_replayed(fails, 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        distributed.run_replayed(lambda r, w, ar: ar([1.0]), 1)

    def swallows(rank, world, all_reduce):
        try:
            all_reduce(torch.ones(1))
        except BaseException:  # noqa: BLE001 - the mistake under test
            pass
        return rank

    with pytest.raises(RuntimeError, match="do not catch BaseException"):
        distributed.run_replayed(swallows, 2)

    draws = iter(range(100))

    def changes(rank, world, all_reduce):
        all_reduce(torch.ones(1))
        all_reduce(torch.full((1,), float(next(draws))))

    with pytest.raises(RuntimeError, match="different tensor when its computation was repeated"):
        distributed.run_replayed(changes, 2)

    def forever(rank, world, all_reduce):
        while True:
            all_reduce(torch.ones(1))

    with pytest.raises(RuntimeError, match="more than 64 times"):
        distributed.run_replayed(forever, 2)


def test_replay_interrupts_a_backward_pass_through_autograd():
    """The interruption is raised inside a custom Function's backward: autograd must pass it
    through y.backward() as it is (it does: the check depends on it)."""

    def rank_fn(rank, world, all_reduce):
        x = torch.full((3, 2), float(rank + 1), requires_grad=True)
        w, b = torch.ones(2, requires_grad=True), torch.zeros(2, requires_grad=True)
        rm, rv = torch.zeros(2), torch.ones(2)
        y = SyncBatchNormFunction.apply(
            x + torch.arange(3.0)[:, None], w, b, rm, rv, 1e-5, 0.1, all_reduce
        )
        (y * torch.arange(6.0).view(3, 2)).sum().backward()
        return x.grad

    grads = distributed.run_replayed(rank_fn, 2)
    assert torch.allclose(grads[0], distributed.run_threads(rank_fn, 2)[0])


def test_comm_counter_counts_calls_and_bytes_per_tag():
    counter = distributed.CommCounter(lambda t: None)
    a, b = counter.tagged("a"), counter.tagged("b")
    a(torch.zeros(3))
    a(torch.zeros(3, dtype=torch.float64))
    b(torch.zeros(5))
    assert counter.calls == {"a": 2, "b": 1} and counter.bytes == {"a": 12 + 24, "b": 20}


def test_sync_bn_module_trains_like_batch_norm_and_evaluates_without_communication():
    model = make_mlp(depth=2, width=8, in_features=5, norm="batch", seed=0)
    twin = copy.deepcopy(model)
    calls = []
    sync_bn.convert_sync_bn(twin, lambda t: calls.append(t.numel()))  # one process: sum = itself
    assert not any(isinstance(m, nn.BatchNorm1d) for m in twin.modules())
    x = torch.randn(16, 5)
    assert torch.allclose(twin(x), model(x), atol=1e-5)
    assert calls == [17, 17]  # one (sum, sum of squares, count) message per layer
    assert torch.allclose(twin.blocks[0].norm.running_var, model.blocks[0].norm.running_var)
    twin.eval(), model.eval()
    assert torch.allclose(twin(x), model(x), atol=1e-5) and len(calls) == 2


# ----------------------------------------------------------------------------------------------
# real processes
# ----------------------------------------------------------------------------------------------


def _no_children_left():
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not multiprocessing.active_children()


needs_gloo = pytest.mark.skipif(
    not distributed.distributed_available()[0], reason="torch.distributed with gloo unavailable"
)


@needs_gloo
def test_run_processes_all_reduces_across_two_real_processes():
    results = distributed.run_processes(dist_ranks.sum_rank, 2, args=(10,), timeout=60)
    assert [r["sum"] for r in results] == [21.0, 21.0]  # (0 + 10) + (1 + 10)
    pids = {r["pid"] for r in results}
    assert len(pids) == 2 and not pids & {__import__("os").getpid()}
    assert _no_children_left()


@needs_gloo
def test_a_failing_rank_is_reported_with_its_traceback_and_nothing_is_left_running():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank one fails on purpose"):
        distributed.run_processes(dist_ranks.fail_on_rank_one, 2, timeout=60)
    assert time.monotonic() - start < 30
    assert _no_children_left()


@needs_gloo
def test_processes_past_the_time_limit_are_stopped():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish within 3 s"):
        distributed.run_processes(dist_ranks.hang, 2, timeout=3)
    assert time.monotonic() - start < 15
    assert _no_children_left()


def test_run_processes_refuses_a_function_spawned_processes_cannot_import():
    def local(rank, world, all_reduce):
        return rank

    with pytest.raises(ValueError, match="module level"):
        distributed.run_processes(local, 2)


@needs_gloo
def test_run_experiment_over_processes_matches_threads():
    kw = dict(seed=0, steps=5, lrs=(0.03,), width=16)
    real = sync_bn.run_experiment(**kw)
    assert real.transport.startswith("2 processes")
    assert "GPU" in real.torch_sync_bn  # torch 2.13 refuses CPU tensors in nn.SyncBatchNorm
    threads = sync_bn.run_experiment(processes=False, **kw)
    assert threads.transport.startswith("2 threads")
    for sync in (False, True):
        assert np.allclose(real.loss(sync, 0.03), threads.loss(sync, 0.03), atol=1e-5)
    calls = real.arms[True, 0.03][0]["calls_per_step"]
    assert calls == {"batch norm": 4.0, "gradients": 1.0}
    assert real.arms[False, 0.03][0]["calls_per_step"] == {"gradients": 1.0}
    assert _no_children_left()


def test_run_experiment_falls_back_to_threads_with_the_reason(monkeypatch):
    monkeypatch.setattr(distributed, "distributed_available", lambda: (False, "no gloo here"))
    res = sync_bn.run_experiment(seed=0, steps=3, lrs=(0.03,), width=8)
    assert res.transport.startswith("2 threads") and "no gloo here" in res.transport
    assert set(res.arms) == {(False, 0.03), (True, 0.03)}


def test_train_single_equals_the_synchronised_run_at_the_first_steps():
    res = sync_bn.run_experiment(seed=1, steps=3, lrs=(0.03,), width=16, processes=False)
    single = sync_bn.train_single(0.03, seed=1, steps=3, batch_size=4, width=16)
    assert np.allclose(single["losses"], res.loss(True, 0.03), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# mixed precision
# ----------------------------------------------------------------------------------------------


def test_variance_errors_grow_with_the_offset_for_bfloat16_sums_only():
    err = mixed_precision.variance_errors([0, 10, 100], n=128, d=16, seed=0)
    assert set(err) == set(mixed_precision.METHODS)
    assert (err["float32, two-pass"] < 1e-5).all()
    assert err["bfloat16, sums"][0] < 0.01 < 0.1 < err["bfloat16, sums"][1]
    assert err["bfloat16, sums"][2] > 0.5
    with pytest.raises(ValueError, match="method"):
        mixed_precision.variance_of(torch.ones(2, 2), "float16")


def test_sums_batch_norm_matches_torch_in_float32_and_keeps_the_input_dtype():
    torch.manual_seed(0)
    x = torch.randn(32, 6) * 2 + 3
    ref, ours = nn.BatchNorm1d(6), mixed_precision.SumsBatchNorm1d(6, float32_stats=True)
    assert torch.allclose(ours(x), ref(x), atol=1e-4)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-5)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-4)
    low = mixed_precision.SumsBatchNorm1d(6, float32_stats=False)
    assert low(x.bfloat16()).dtype == torch.bfloat16
    assert low.running_mean.dtype == torch.float32


def test_offset_mlp_adds_the_offset_before_every_batch_norm():
    m = mixed_precision.offset_mlp("sums in bfloat16", 5.0, seed=0)
    for block in m.blocks:
        assert isinstance(block.linear[1], mixed_precision.Offset) and block.linear[1].offset == 5.0
        assert isinstance(block.norm, mixed_precision.SumsBatchNorm1d)
    with pytest.raises(ValueError, match="arm"):
        mixed_precision.offset_mlp("fp8", 1.0)


# ----------------------------------------------------------------------------------------------
# the exercises
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ex_id, obj", [("10.fold_bn", fold_bn), ("10.SyncBatchNormFunction", SyncBatchNormFunction)]
)
def test_answers_pass_visible_and_hidden_cases(ex_id, obj):
    assert verify(ex_id, obj).passed
    ex = get_exercise(ex_id)
    for seed in range(3):
        for case in ex.cases(np.random.default_rng(seed), True):
            assert ex.judge(ex.run(obj, case), case) is None, case.label


def _fold_with(flaw):
    def fn(layer, bn):
        folded = layer if flaw == "in_place" else copy.deepcopy(layer)
        var = bn.running_var if flaw == "no_eps" else bn.running_var + bn.eps
        s = (bn.weight if bn.weight is not None else 1.0) / var.sqrt()
        b = layer.bias if (layer.bias is not None and flaw != "drop_bias") else torch.zeros_like(s)
        with torch.no_grad():
            w = layer.weight * s.view(-1, *[1] * (layer.weight.dim() - 1))
            folded.weight.copy_(w)
        folded.bias = nn.Parameter(((b - bn.running_mean) * s + bn.bias).detach())
        if flaw == "sequential":
            return nn.Sequential(folded)
        return folded

    return fn


@pytest.mark.parametrize(
    "flaw, verdict",
    [
        ("no_eps", "eps is missing"),
        ("drop_bias", "layer's own bias is lost"),
        ("in_place", "changed the layer or the batch norm"),
        ("sequential", "returned a Sequential"),
    ],
)
def test_fold_bn_mistakes_get_their_verdict(flaw, verdict):
    v = verify("10.fold_bn", _fold_with(flaw))
    assert not v.passed and verdict in v.message, v.message


class _Sync(torch.autograd.Function):
    """The answer with one mistake switched on by a class attribute."""

    flaw = ""

    @staticmethod
    def forward(ctx, x, w, b, rm, rv, eps, m, all_reduce):
        flaw = _Sync.flaw
        ar = (lambda t: None) if flaw == "local_stats" else all_reduce
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        c = x.shape[1]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), x.numel() // c)])
        ar(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        invstd = torch.rsqrt(var + eps)
        rm.mul_(1 - m).add_(m * mean)
        rv.mul_(1 - m).add_(m * var * (1 if flaw == "biased_running" else n / (n - 1)))
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        ctx.save_for_backward(x_hat, w, invstd, n)
        ctx.all_reduce = all_reduce
        return x_hat * w.view(shape) + b.view(shape)

    @staticmethod
    def backward(ctx, g):
        x_hat, w, invstd, n = ctx.saved_tensors
        flaw = _Sync.flaw
        dims = [0, *range(2, g.dim())]
        shape = [1, -1] + [1] * (g.dim() - 2)
        c = g.shape[1]
        sums = torch.cat([g.sum(dims), (g * x_hat).sum(dims)])
        gw, gb = sums[c:].clone(), sums[:c].clone()
        if flaw == "local_backward":
            n = torch.tensor(float(g.numel() // c), dtype=g.dtype)
        else:
            ctx.all_reduce(sums)
        if flaw == "reduced_param_grads":
            gw, gb = sums[c:].clone(), sums[:c].clone()
        dx = (w * invstd).view(shape) * (
            g - (sums[:c] / n).view(shape) - x_hat * (sums[c:] / n).view(shape)
        )
        return dx, gw, gb, None, None, None, None, None


@pytest.mark.parametrize(
    "flaw, verdict",
    [
        ("", None),
        ("local_stats", "own batch statistics"),
        ("local_backward", "this rank's sums only"),
        ("reduced_param_grads", "own share"),
        ("biased_running", "unbiased variance"),
    ],
)
def test_sync_function_mistakes_get_their_verdict(flaw, verdict, monkeypatch):
    monkeypatch.setattr(_Sync, "flaw", flaw)
    v = verify("10.SyncBatchNormFunction", _Sync)
    if verdict is None:
        assert v.passed, v.message
    else:
        assert not v.passed and verdict in v.message, v.message


def test_sync_check_names_a_non_function_and_a_placeholder():
    v = verify("10.SyncBatchNormFunction", nn.BatchNorm1d)
    assert not v.passed and "torch.autograd.Function" in v.message

    class Blank(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            raise NotImplementedError

        @staticmethod
        def backward(ctx, grad):
            raise NotImplementedError

    assert verify("10.SyncBatchNormFunction", Blank).status == "not started"


def test_hints_do_not_point_to_the_answers():
    for ex_id in ("10.fold_bn", "10.SyncBatchNormFunction"):
        hints = get_exercise(ex_id).hints
        assert len(hints) >= 2
        assert not any("reference" in h or "answers" in h for h in hints)
