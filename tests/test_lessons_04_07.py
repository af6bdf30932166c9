"""Unit tests for the machinery of lessons 04-07 and their exercises (fast: a few seconds)."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.exercises import get_exercise, verify
from course_utils.exercises.notebook import VISIBLE_SEED
from course_utils.experiments import group_norm as G
from course_utils.experiments import sequence as Q
from course_utils.experiments import small_batch as S

EXERCISES = {
    "04": ("04.GhostBatchNorm1d",),
    "05": ("05.recalibrate_bn", "05.evaluate_accuracy"),
    "06": (
        "06.layer_norm_forward",
        "06.layer_norm_backward",
        "06.rms_norm_forward",
        "06.rms_norm_backward",
        "06.LayerNorm",
    ),
    "07": (
        "07.instance_norm_forward",
        "07.group_norm_forward",
        "07.group_norm_backward",
        "07.GroupNorm",
    ),
}
ALL_IDS = [i for ids in EXERCISES.values() for i in ids]

# ------------------------------------------------------------------------------------------
# lessons 04 and 05: data and the torch helpers (the ensembles: tests/test_ensemble.py)
# ------------------------------------------------------------------------------------------


def test_mnist14_split_shapes_and_standardization():
    d = S.mnist14()
    assert d.x_train.shape == (7000, 196) and d.x_val.shape == (1000, 196)
    assert d.x_test.shape == (2000, 196) and d.x_train.dtype == np.float32
    assert abs(float(d.x_train.mean())) < 1e-3 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert S.mnist14(images=True).x_train.shape == (7000, 1, 14, 14)


def test_ghost_batch_norm_equals_batch_norm_for_one_ghost_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 5) * 3 + 1
    ghost, bn = S.GhostBatchNorm1d(5, ghost_size=8), nn.BatchNorm1d(5)
    torch.testing.assert_close(ghost(x), bn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ghost.running_var, bn.running_var)
    halves = S.GhostBatchNorm1d(5, ghost_size=4)(x)
    torch.testing.assert_close(halves[:4], nn.BatchNorm1d(5)(x[:4]), atol=1e-5, rtol=1e-5)
    ghost.eval(), bn.eval()
    torch.testing.assert_close(ghost(x), bn(x), atol=1e-5, rtol=1e-5)


def test_batch_renorm_is_batch_norm_at_rmax_1_dmax_0():
    torch.manual_seed(1)
    rn, bn = S.BatchRenorm1d(4, rmax=1.0, dmax=0.0), nn.BatchNorm1d(4)
    for _ in range(3):
        x = torch.randn(6, 4) * 2 - 1
        torch.testing.assert_close(rn(x), bn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rn.running_mean, bn.running_mean)


def test_recalibrate_bn_is_a_plain_average_and_restores_everything():
    model = cu.make_mlp(depth=2, width=16, norm="batch", seed=0).eval()
    weights = [p.clone() for p in model.parameters()]
    x = torch.randn(60, 784) * 2 + 3
    S.recalibrate_bn(model, x, batch_size=20)
    assert not model.training and model.blocks[0].norm.momentum == 0.1
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    with torch.no_grad():
        z = model.blocks[0].linear(x)
    means = torch.stack([z[i : i + 20].mean(0) for i in (0, 20, 40)]).mean(0)
    torch.testing.assert_close(model.blocks[0].norm.running_mean, means, atol=1e-5, rtol=1e-5)


def test_evaluate_accuracy_and_shift_inputs():
    d = cu.load_mnist()
    model = cu.make_mlp(depth=1, width=8, norm="batch", seed=0).train()
    before = model.blocks[0].norm.running_mean.clone()
    acc = S.evaluate_accuracy(model, d.x_test[:100], d.y_test[:100], batch_size=7)
    assert model.training and torch.equal(before, model.blocks[0].norm.running_mean)
    assert acc == cu.evaluate(model, d.x_test[:100], d.y_test[:100])[1]
    torch.testing.assert_close(S.shift_inputs(d.x_test[:5]), d.x_test[:5], atol=1e-5, rtol=0)


def test_gradient_split_error_zero_for_layer_norm_not_for_batch_norm():
    d = cu.load_mnist()
    x, y = d.x_train[:16], d.y_train[:16]
    ln = S.gradient_split_error(cu.make_mlp(depth=1, width=8, norm="layer"), x, y, (4, 2))
    bn = S.gradient_split_error(cu.make_mlp(depth=1, width=8, norm="batch"), x, y, (4, 2))
    assert max(ln.values()) < 1e-5 and min(bn.values()) > 0.01


def test_freeze_bn_statistics_keeps_affine_learning():
    model = cu.make_mlp(depth=1, width=8, norm="batch").train()
    S.freeze_bn_statistics(model)
    assert model.training and not model.blocks[0].norm.training
    before = model.blocks[0].norm.running_mean.clone()
    model(torch.randn(4, 784)).sum().backward()
    assert torch.equal(before, model.blocks[0].norm.running_mean)
    assert model.blocks[0].norm.weight.grad is not None


# ------------------------------------------------------------------------------------------
# lesson 06
# ------------------------------------------------------------------------------------------


def test_batch_dependence_and_invariances():
    dep = Q.batch_dependence(n=8, d=8, trials=2)
    assert dep["layer"] < 1e-6 and dep["rms"] < 1e-6 and dep["batch"] > 0.1
    # Ba et al.'s Table 1, every entry: invariant means unchanged up to eps and rounding
    for seed in (0, 1):
        t = Q.invariance_table(n=16, d_in=8, d=12, seed=seed)
        assert set(t) == set(Q.INVARIANCES)
        for row, expected in Q.INVARIANCES.items():
            for norm, invariant in expected.items():
                assert (t[row][norm] < 1e-3) == invariant, (row, norm, t[row][norm])
                assert invariant or t[row][norm] > 0.1, (row, norm)


def test_norm_rnn_shapes_and_recall_batch():
    x, y = Q.recall_batch(3, seq_len=9, vocab=5, delay=4)
    assert x.shape == (3, 9) and torch.equal(y, x[:, :5])
    out = Q.NormRNN(vocab=5, hidden=6, norm="rms", delay=4)(x)
    assert out.shape == (3, 5, 5)
    with pytest.raises(ValueError):
        Q.NormRNN(norm="batch")


def test_time_norms_reports_every_timing():
    t = Q.time_norms(n=64, d=32, repeats=1)
    assert len(t) == 6 and all(v > 0 for v in t.values())


# ------------------------------------------------------------------------------------------
# lesson 07
# ------------------------------------------------------------------------------------------


def test_contrast_images_identity_and_cubes():
    d = S.mnist14(images=True)
    x = torch.tensor(d.x_test[:3])
    torch.testing.assert_close(G.contrast_images(x, 1.0, 0.0, d.mean, d.std), x)
    import matplotlib

    matplotlib.use("Agg")
    fig = G.draw_cubes(n=3, c=4, hw=2, groups=2)
    assert len(fig.axes) == 4


# ------------------------------------------------------------------------------------------
# the exercises
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exercise_id", ALL_IDS)
def test_reference_passes_visible_and_hidden_cases_quickly(exercise_id):
    ex = get_exercise(exercise_id)
    ref = ex.reference()
    assert verify(exercise_id, ref).passed
    t0 = time.perf_counter()
    for seed in (0, 1):
        cases = ex.cases(np.random.default_rng([seed, 7]), True)
        assert cases
        for case in cases:
            assert ex.judge(ex.run(ref, copy.deepcopy(case)), case) is None, case.label
    assert time.perf_counter() - t0 < 3.0  # the grader allows a few seconds per exercise


def test_hidden_cases_differ_from_visible_ones():
    for exercise_id in ALL_IDS:
        ex = get_exercise(exercise_id)
        vis = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
        hid = ex.cases(np.random.default_rng(99), True)
        assert [c.label for c in vis] != [c.label for c in hid], exercise_id


def test_exercise_diagnoses_name_the_mistake():
    def buggy_eval(model, x, y, batch_size=50):
        correct = 0
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        return correct / len(x)

    assert "model.eval()" in verify("05.evaluate_accuracy", buggy_eval).message

    def no_reset(model, x, batch_size=64):
        model.train()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
        model.eval()

    assert "reset" in verify("05.recalibrate_bn", no_reset).message

    def ln_over_batch(x, gamma, beta, eps=1e-5):
        return (x - x.mean(0)) / np.sqrt(x.var(0) + eps) * gamma + beta

    assert "batch norm" in verify("06.layer_norm_forward", ln_over_batch).message

    def rms_centred(x, weight, eps=1e-6):
        c = x - x.mean(-1, keepdims=True)
        return c / np.sqrt((c**2).mean(-1, keepdims=True) + eps) * weight

    assert "subtracts the mean" in verify("06.rms_norm_forward", rms_centred).message

    def gn_strided(x, groups, gamma, beta, eps=1e-5):
        n, c = x.shape[:2]
        xs = x.reshape(n, c // groups, groups, -1)
        mu, var = xs.mean((1, 3), keepdims=True), xs.var((1, 3), keepdims=True)
        y = ((xs - mu) / np.sqrt(var + eps)).reshape(x.shape)
        return y * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)

    assert "consecutive" in verify("07.group_norm_forward", gn_strided).message


def test_module_exercises_refuse_torch_kernels():
    class Wrapped(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            self.inner = nn.GroupNorm(*args, **kwargs)
            self.weight, self.bias = self.inner.weight, self.inner.bias

        def forward(self, x):
            return self.inner(x)

    v = verify("07.GroupNorm", Wrapped)
    assert v.status == "failed" and "primitive" in v.message


def test_exercise_ids_points_and_forbidden_lists():
    points = {i: get_exercise(i).points for i in ALL_IDS}
    assert sum(points[i] for i in EXERCISES["04"]) == 3
    assert sum(points[i] for i in EXERCISES["05"]) == 4
    assert sum(points[i] for i in EXERCISES["06"]) == 9
    assert sum(points[i] for i in EXERCISES["07"]) == 8
    # the first exercise of each lesson (in id order) must forbid torch's normalization, except
    # in lesson 05, whose exercises run a model made of torch's batch-norm layers
    for lesson, ids in EXERCISES.items():
        if lesson == "05":
            assert all(get_exercise(i).forbidden == () for i in ids)
        else:
            assert "layer_norm" in get_exercise(sorted(ids)[0]).forbidden
