"""Unit tests for the machinery of lessons 01-03 and their exercises (fast: a few seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.exercises import get_exercise, verify
from course_utils.exercises.notebook import VISIBLE_SEED
from course_utils.experiments import bn_sweeps as B
from course_utils.experiments import covariate_shift as C
from course_utils.experiments import scaling as S

# ------------------------------------------------------------------------------------------
# scaling (lesson 01)
# ------------------------------------------------------------------------------------------


def test_standardizer_statistics_constant_feature_and_inverse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1.0, 100.0, 0.01] + [5.0, -300.0, 2.0]
    x[:, 2] = 7.0
    sc = S.Standardizer()
    assert sc.fit(x) is sc
    z = sc.transform(x)
    np.testing.assert_allclose(z[:, :2].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, :2].std(0), 1, atol=1e-12)
    np.testing.assert_array_equal(z[:, 2], 0.0)
    np.testing.assert_allclose(sc.inverse_transform(z), x, atol=1e-9)


def test_minmax_and_robust_scalers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 2)) * [3.0, 0.5]
    x[:, 1] = -2.0
    z = S.MinMaxScaler().fit(x).transform(x)
    assert z[:, 0].min() == 0.0 and z[:, 0].max() == 1.0
    np.testing.assert_array_equal(z[:, 1], 0.0)
    r = S.RobustScaler().fit(x)
    zr = r.transform(x)
    q25, q50, q75 = np.percentile(zr[:, 0], [25, 50, 75])
    assert abs(q50) < 1e-12 and abs((q75 - q25) - 1) < 1e-12
    np.testing.assert_allclose(r.inverse_transform(zr), x)
    with pytest.raises(ValueError):
        S.Standardizer().fit(np.zeros(5))


def test_steps_to_converge_matches_the_loop():
    X, y, _ = cu.data.badly_scaled_2d(n=100, scales=(1.0, 3.0), seed=3)
    lr = 1.0 / np.linalg.eigvalsh(S.hessian(X))[-1]
    path, losses = S.gradient_descent(X, y, lr, 3000)
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    l_star = 0.5 * np.mean((X @ w_star - y) ** 2)
    rel = (losses - l_star) / (losses[0] - l_star)
    loop_steps = int(np.argmax(rel <= 1e-6))
    assert rel[loop_steps] <= 1e-6
    closed = S.steps_to_converge(X, y, lr, tol=1e-6)
    assert abs(closed - loop_steps) <= 1  # rounding of the loop's loss evaluation
    assert S.steps_to_converge(X, y, 2.5 / np.linalg.eigvalsh(S.hessian(X))[-1]) is None


def test_standardizing_rounds_the_bowl_and_tuning_finds_the_best_lr():
    X, y, _ = cu.data.badly_scaled_2d(n=200, scales=(1.0, 10.0), seed=0)
    Xs = S.Standardizer().fit(X).transform(X)
    assert S.condition_number(X) > 100 * S.condition_number(Xs)
    lrs = np.logspace(-6, 1, 36)
    best_lr, best_steps, table = S.tune_steps(Xs, y - y.mean(), lrs)
    assert best_steps == min(s for s in table.values() if s is not None)
    raw_steps = S.tune_steps(X, y, lrs)[1]
    assert raw_steps > 20 * best_steps


def test_scaled_split_fits_on_training_data_only():
    raw = cu.load_mnist(scale="raw")
    split = S.scaled_split(raw, S.Standardizer())
    assert split.x_train.dtype == torch.float32 and split.x_train.shape == raw.x_train.shape
    assert float(split.x_train.mean(0).abs().max()) < 1e-4
    assert float(split.x_test.mean(0).abs().max()) > 1e-3  # test statistics are not used
    assert S.scaled_split(raw, None) is raw


def test_refit_per_sample_maps_everything_to_zero():
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(100, 6))
    x_test = rng.normal(size=(30, 6))
    y_test = torch.from_numpy(rng.integers(0, 3, size=30))
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    acc_one = S.refit_accuracy(model, S.Standardizer, x_train, x_test, y_test, 1)
    pred0 = int(model(torch.zeros(1, 6)).argmax())
    assert acc_one == pytest.approx(float((y_test == pred0).float().mean()))
    assert 0.0 <= S.refit_accuracy(model, S.Standardizer, x_train, x_test, y_test, None) <= 1.0


def test_mnist_lr_sweep_shapes_and_best():
    data = cu.load_mnist()
    sw = S.mnist_lr_sweep(data, [0.01, 0.1, 100.0], steps=5, seeds=(0, 1))
    assert sw.loss.shape == (3, 2) and sw.acc.shape == (3, 2)
    assert sw.best_lr in (0.01, 0.1) and isinstance(sw.best_is_interior, bool)


def test_recommend_scaler_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    assert S.recommend_scaler(x) == "standard"
    assert S.recommend_scaler(x, bounded_range=True) == "minmax"
    x[:3] = 500.0
    assert S.recommend_scaler(x) == "robust"
    assert S.recommend_scaler(x, bounded_range=True) == "robust"  # outliers take precedence
    assert S.recommend_scaler(np.zeros(10)) == "standard"  # IQR 0: nothing to call an outlier


# ------------------------------------------------------------------------------------------
# covariate shift (lesson 02)
# ------------------------------------------------------------------------------------------


def test_activation_stats_matches_probe_and_removes_hooks():
    model = cu.make_mlp(depth=3, width=20, activation="tanh", in_features=8, init_scale=2.0)
    x = torch.randn(16, 8)
    stats = C.activation_stats(model, x, threshold=0.9)
    assert all(len(b.act._forward_hooks) == 0 for b in model.blocks)
    with cu.ActivationProbe(model, track_grads=False) as probe:
        model(x)
    np.testing.assert_allclose(stats["std"], probe.stat("std")[0], rtol=1e-5)
    np.testing.assert_allclose(stats["mean"], probe.stat("mean")[0], atol=1e-6)
    assert stats["saturated"].shape == (3,) and np.all(
        (0 <= stats["saturated"]) & (stats["saturated"] <= 1)
    )


def test_depth_profile_shapes():
    p = C.depth_profile(torch.randn(32, 784), activation="relu", init_scale=1.0, depth=4, width=16)
    assert p["std"].shape == (4,) and p["hist"].shape[0] == 4 and np.all(p["saturated"] == 0)


def test_noisy_batch_norm_train_and_eval():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5)
    noisy = C.NoisyBatchNorm(bn)
    x = torch.randn(4096, 5) * 3 + 1
    ref = nn.functional.batch_norm(x, None, None, training=True)
    y1, y2 = noisy(x), noisy(x)
    assert not torch.allclose(y1, ref, atol=1e-3)  # noise was added
    # i.i.d. per activation: two samples with the same normalized value get different outputs
    x_same = torch.cat([x[:1], x[:1], x[2:]])
    y = noisy(x_same)
    assert (y[0] - y[1]).abs().min() > 0
    # the distribution moves every step: each unit's mean jumps between calls, within the
    # shift range, and its scale lies in [1 - jitter, 1.5 + jitter]
    m1, m2 = y1.mean(0), y2.mean(0)
    assert (m1 - m2).abs().max() > 0.05 and m1.abs().max() < 0.5 + 0.05
    s1 = (y1 * ref).mean(0)  # E[s * z^2] = E[s] for unit-variance z
    assert ((s1 > 1 - 0.3) & (s1 < 1.5 + 0.3)).all()
    noisy.eval()
    torch.testing.assert_close(noisy(x), bn(x))


def test_recalibrate_bn_restores_settings_and_uses_clean_statistics():
    model = C.add_noise(cu.make_mlp(depth=2, width=8, norm="batch", in_features=4))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    x = torch.randn(200, 4) * 2 + 3
    model.eval()
    C.recalibrate_bn(model, x, batch_size=50)
    assert not model.training
    assert all(m.momentum == 0.1 for m in bns)
    assert all(m.noise for m in model.modules() if isinstance(m, C.NoisyBatchNorm))
    z = model.blocks[0].linear(x).detach()
    torch.testing.assert_close(bns[0].running_mean, z.mean(0), atol=1e-5, rtol=1e-5)


def test_figure1_and_noisy_bn_run_small():
    data = cu.load_mnist()
    f = C.figure1(data, norm="batch", steps=20, record_every=10, eval_every=10, n_probe=100)
    assert f.steps.tolist() == [10, 20] and f.pcts.shape == (2, 3, 100)
    assert f.drift().shape == (100,) and f.drift(0) >= 0
    res = C.noisy_bn(
        data, arms=("batch", "noisy"), seeds=(0,), depth=2, width=16, steps=5, probe_layer=1
    )
    assert set(res.acc) == {"batch", "noisy"} and len(res.acc["noisy"]) == 1
    assert res.mean_shift("noisy") > 0


# ------------------------------------------------------------------------------------------
# bn sweeps (lesson 03)
# ------------------------------------------------------------------------------------------


def _fake_run(lr, acc, diverged=False, curve=()):
    steps = [25 * (i + 1) for i in range(len(curve))]
    return B.Run("none", lr, 1.0, 0, acc, 0.1, diverged, steps, list(curve))


def test_run_selection_helpers():
    runs = [
        _fake_run(0.1, 0.90, curve=(0.5, 0.8, 0.9)),
        _fake_run(0.3, 0.93, curve=(0.6, 0.93, 0.93)),
        _fake_run(1.0, 0.86, curve=(0.93, 0.9, 0.86)),
        _fake_run(3.0, 0.1, diverged=True),
    ]
    assert B.best_lr(runs) == 0.3
    assert B.largest_stable_lr(runs) == 1.0
    assert B.fastest_lr(runs, 0.93) == 1.0
    assert B.steps_to_target(runs[:2], 0.95, budget=75) == [100.0, 100.0]
    assert B.steps_to_target(runs[1:2], 0.93, budget=75) == [50.0]
    assert math.isnan(B.largest_stable_lr(runs[3:]))


def test_run_stops_early_when_diverging():
    data = cu.load_mnist()
    r = B.run(data, norm="none", lr=50.0, depth=3, width=32, steps=200, eval_every=50)
    assert r.diverged and not r.stable and r.eval_steps == []
    ok = B.run(data, norm="batch", lr=0.1, depth=2, width=32, steps=30, eval_every=10)
    assert not ok.diverged and ok.eval_steps == [10, 20, 30]
    assert "diverged" in B.table({"none": [r], "batch": [ok]})


def test_cnn_with_norm():
    model = B.cnn_with_norm(lambda c: nn.GroupNorm(1, c), channels=(4, 8))
    assert all(isinstance(b.norm, nn.GroupNorm) for b in model.blocks)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ------------------------------------------------------------------------------------------
# exercises
# ------------------------------------------------------------------------------------------

LESSON_IDS = [
    "01.Standardizer",
    "01.MinMaxScaler",
    "01.choose_scaler",
    "02.activation_stats",
    "03.batch_norm_forward",
    "03.batch_norm_backward",
    "03.batch_norm_backward_simple",
    "03.BatchNorm2d",
]


@pytest.mark.parametrize("exercise_id", LESSON_IDS)
def test_reference_passes_visible_and_hidden_cases(exercise_id):
    ex = get_exercise(exercise_id)
    assert ex.lesson == exercise_id[:2] and ex.points > 0 and ex.hints
    assert verify(exercise_id, ex.reference()).passed
    for seed in (0, 1):
        for case in ex.cases(np.random.default_rng(seed), True):
            assert ex.judge(ex.run(ex.reference(), case), case) is None, case.label


@pytest.mark.parametrize("exercise_id", LESSON_IDS)
def test_visible_cases_are_fixed_and_hidden_cases_vary(exercise_id):
    ex = get_exercise(exercise_id)
    a = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    b = ex.cases(np.random.default_rng(VISIBLE_SEED), False)
    assert [c.label for c in a] == [c.label for c in b]
    h1 = ex.cases(np.random.default_rng(1), True)
    h2 = ex.cases(np.random.default_rng(2), True)
    assert [c.label for c in h1] != [c.label for c in h2]


def test_placeholder_is_not_started():
    def blank(*args, **kwargs):
        raise NotImplementedError

    assert verify("03.batch_norm_forward", blank).status == "not started"


def test_scaler_verdicts():
    class Leaky(S.Standardizer):
        def transform(self, X):
            return S.Standardizer().fit(X).transform(X)

    class Sample(S.Standardizer):
        def fit(self, X):
            super().fit(X)
            self.scale_ = np.where(X.std(0, ddof=1) > 0, X.std(0, ddof=1), 1.0)
            return self

    assert "leaks" in verify("01.Standardizer", Leaky).message
    assert "ddof=1" in verify("01.Standardizer", Sample).message
    assert (
        "answer with one of"
        in verify("01.choose_scaler", lambda x, bounded_range=False: "log").message
    )
    always_standard = verify("01.choose_scaler", lambda x, bounded_range=False: "standard")
    assert "interquartile" in always_standard.message


def test_activation_stats_verdict_for_left_hooks():
    def leaves_hooks(model, x, threshold=0.97):
        for b in model.blocks:
            b.act.register_forward_hook(lambda m, i, o: None)
        return C.activation_stats(model, x, threshold)

    assert "still attached" in verify("02.activation_stats", leaves_hooks).message


def _bn_forward_variant(flaw):
    from course_utils.exercises.lesson03 import _forward_variant

    return _forward_variant(**{flaw: True})


@pytest.mark.parametrize(
    "flaw, words",
    [
        ("no_update", "not updated"),
        ("eval_uses_batch", "train and eval give the same output"),
        ("train_uses_running", "wrong train/eval behaviour"),
        ("biased_running", "unbiased"),
        ("momentum_reversed", "momentum is reversed"),
    ],
)
def test_batch_norm_forward_verdicts(flaw, words):
    assert words in verify("03.batch_norm_forward", _bn_forward_variant(flaw)).message


def test_batch_norm_backward_verdict_names_numerical_gradient_error():
    ref = get_exercise("03.batch_norm_backward_simple").reference()

    def constant_stats(dout, x, gamma, eps=1e-5):
        _, dg, db = ref(dout, x, gamma, eps)
        return dout * gamma / np.sqrt(x.var(0) + eps), dg, db

    msg = verify("03.batch_norm_backward", constant_stats).message
    assert (
        "relative error" in msg and "numerical gradient" in msg and "mean and the variance" in msg
    )


def test_batchnorm2d_verdicts():
    class PerSample(nn.Module):
        def __init__(self, c, eps=1e-5, momentum=0.1):
            super().__init__()
            self.eps = eps
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

        def forward(self, x):
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            v = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
            s = (1, -1, 1, 1)
            return (x - m) / torch.sqrt(v + self.eps) * self.weight.view(s) + self.bias.view(s)

    class UsesKernel(PerSample):
        def forward(self, x):
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, self.training
            )

    assert "per channel" in verify("03.BatchNorm2d", PerSample).message
    assert "primitive" in verify("03.BatchNorm2d", UsesKernel).message
    assert "subclasses" in verify("03.BatchNorm2d", type("Sub", (nn.BatchNorm2d,), {})).message
    # the kernel block is lifted again afterwards
    assert nn.functional.batch_norm(torch.randn(4, 2), None, None, training=True).shape == (4, 2)
