"""The widgets driven from Python: controls change what is plotted, in the right direction,
and changing them many times leaves nothing behind (threads, figures, hooks, artists)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from course_utils.experiments.scaling import gradient_descent
from course_utils.widgets import ActivationExplorer, NormalizationPlayground, ScalingExplorer
from course_utils.widgets.playground import normalize, sample_tensor, stat_groups
from course_utils.widgets.scaling import scale_features


@pytest.fixture
def explorer():
    ex = ActivationExplorer(max_steps=400)
    yield ex
    ex.close()


def _png_ok(bundle: dict) -> tuple[int, int]:
    img = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    return img.size


# -- ActivationExplorer -------------------------------------------------------------------


def test_explorer_plots_every_panel(explorer):
    p = explorer.plotted()
    assert p["step"] == 0 and p["hist_pct"].shape == (4, 40)
    assert p["hist_pct"].sum(axis=1) == pytest.approx(np.full(4, 100.0))
    assert p["preact_std"].shape == p["grad_std"].shape == p["saturated_pct"].shape == (4,)
    assert np.isfinite(p["grad_std"]).all()
    explorer.step(20)
    q = explorer.plotted()
    assert q["step"] == 20 and len(q["loss"]) == 21 and len(q["loss_ema"]) == 21
    assert q["update_ratio"].shape == (4, 5)  # every 5th step, 4 hidden layers + output layer
    assert (q["update_ratio"] > 0).all()
    assert q["test_acc_pct"][-1] > q["test_acc_pct"][0]
    assert not np.array_equal(p["hist_pct"], q["hist_pct"])


def test_large_init_saturates_tanh_and_batch_norm_fixes_it(explorer):
    explorer.set(norm="none", activation="tanh", init_scale=5.0)
    assert explorer.plotted()["saturated_pct"].mean() > 50  # at initialisation
    explorer.step(50)
    saturated = explorer.plotted()["saturated_pct"]
    assert saturated.min() > 50
    explorer.set(norm="batch")  # the same init scale, batch norm before tanh
    explorer.step(50)
    assert explorer.plotted()["saturated_pct"].max() < 15


def test_batch_norm_keeps_preactivation_std_near_one(explorer):
    # measured on the pre-activation (the input of tanh), which with placement="before" is
    # batch norm's output: gamma starts at 1 and moves little in 200 steps
    explorer.set(norm="batch", placement="before", init_scale=3.0)
    explorer.step(200)
    p = explorer.plotted()
    assert np.all(np.abs(p["preact_std"] - 1) < 0.15), p["preact_std"]
    assert np.all(np.abs(p["preact_mean"]) < 0.15)
    explorer.set(norm="none")  # without it the same init scale gives std ~ 3 and more
    explorer.step(200)
    assert explorer.plotted()["preact_std"].min() > 2


def test_relu_shows_dead_units_and_divergence_stops_training(explorer):
    explorer.set(activation="relu", lr=10**0.5, init_scale=3.0)
    p = explorer.plotted()
    assert "dead_pct" in p and "saturated_pct" not in p
    assert np.all((p["dead_pct"] >= 0) & (p["dead_pct"] <= 100))
    explorer.step(100)
    p = explorer.plotted()
    assert p["diverged"] and p["step"] < 100
    assert "diverged" in explorer.status.value


def test_over_time_view_shows_layer_by_step_heatmap(explorer):
    explorer.step(30)
    explorer.set(view="over time")
    ax = explorer.figure.ax
    assert ax["heat"].get_visible() and not ax["hist"].get_visible()
    heat = explorer.plotted()["heatmap"]
    assert heat.shape == (4 * 40, 7)  # layers x bins rows, one column per 5 steps (0..30)
    explorer.set(depth=2)
    explorer.step(10)
    assert explorer.plotted()["heatmap"].shape[0] == 2 * 40


def test_control_changes_leave_nothing_behind(explorer):
    explorer.step(5)
    figs, threads = plt.get_fignums(), threading.active_count()
    fig = explorer.view.figure
    n_axes = len(fig.axes)
    counts = [(len(ax.lines), len(ax.patches), len(ax.texts), len(ax.images)) for ax in fig.axes]
    old_models = []
    changes = [
        {"norm": "batch"}, {"depth": 6}, {"activation": "relu"}, {"width": 50},
        {"placement": "after"}, {"norm": "layer"}, {"depth": 4}, {"batch_size": 16},
        {"activation": "tanh"}, {"lr": 0.5}, {"init_scale": 2.0}, {"norm": "none"},
        {"width": 100}, {"batch_size": 64}, {"lr": 0.1}, {"init_scale": 1.0},
        {"placement": "before"},
    ]  # fmt: skip
    for change in changes * 2:
        old_models.append(explorer.session.model)
        key, value = next(iter(change.items()))
        explorer.controls[key].value = value  # as a learner's click would
        explorer.step(2)
    assert plt.get_fignums() == figs
    assert threading.active_count() == threads
    assert len(fig.axes) == n_axes
    after = [(len(ax.lines), len(ax.patches), len(ax.texts), len(ax.images)) for ax in fig.axes]
    assert after == counts  # back to depth 4: the same artists, none piled up
    for model in old_models:
        assert all(not b.act._forward_hooks for b in model.blocks)
    assert all(len(b.act._forward_hooks) == 1 for b in explorer.session.model.blocks)
    assert len(explorer.view._animated) == len(set(map(id, explorer.view._animated)))


def test_blitted_frame_equals_a_full_render(explorer):
    view = explorer.view
    view.widget.syncing_data_url = False  # as if JupyterLab showed the canvas
    explorer.step(10)
    view.render(full=True)
    explorer.step(10)
    draws = view.full_draws
    view.render()  # blit: restore the background, draw the animated artists
    assert view.full_draws == draws, "the background should still be valid"
    blit = np.asarray(view.figure.canvas.buffer_rgba()).copy()
    view.render(full=True)
    full = np.asarray(view.figure.canvas.buffer_rgba())
    assert np.mean(np.any(blit != full, axis=-1)) < 1e-3  # identical up to antialiasing


def test_train_runs_as_a_task_and_yields_to_control_changes(explorer):
    with pytest.raises(RuntimeError):
        explorer.train()  # no event loop outside a kernel

    async def scenario():
        explorer.train()
        await asyncio.sleep(0.3)
        first = explorer.session
        assert explorer.training and first.step > 0
        explorer.controls["norm"].value = "batch"  # handled between two chunks
        await asyncio.sleep(0.3)
        assert explorer.session is not first and explorer.session.step > 0
        explorer.pause()
        await asyncio.sleep(0.2)
        assert not explorer.training
        assert not explorer.buttons["train"].disabled and explorer.buttons["pause"].disabled
        await explorer.run(steps=20)
        return explorer.session.step

    steps_before = explorer.session.step
    assert asyncio.run(scenario()) >= steps_before + 20


def test_explorer_static_fallback_has_a_png(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    w, h = _png_ok(bundle)
    assert (w, h) == explorer.view.css_size == (840, 470)  # fits an 848-pixel output area
    assert "ActivationExplorer" in bundle["text/plain"]


# -- NormalizationPlayground ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, groups, n_groups",
    [("batch", 2, 6), ("layer", 2, 4), ("instance", 2, 24), ("group", 3, 12), ("group", 1, 4)],
)
def test_stat_groups_partition_the_tensor(kind, groups, n_groups):
    ids = stat_groups(kind, (4, 6, 5, 5), groups)
    counts = np.bincount(ids.ravel())
    assert len(counts) == n_groups and len(set(counts)) == 1  # equal-sized groups


@pytest.mark.parametrize("kind", ["batch", "layer", "instance", "group"])
def test_normalize_matches_torch(kind):
    x = sample_tensor("feature maps")
    y, _, _, _ = normalize(x, kind, groups=3, eps=1e-5)
    t = torch.from_numpy(x)
    ref = {
        "batch": lambda: torch.nn.functional.batch_norm(t, None, None, training=True, eps=1e-5),
        "layer": lambda: torch.nn.functional.layer_norm(t, t.shape[1:], eps=1e-5),
        "instance": lambda: torch.nn.functional.instance_norm(t, eps=1e-5),
        "group": lambda: torch.nn.functional.group_norm(t, 3, eps=1e-5),
    }[kind]()
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-8)


def test_playground_highlights_the_shared_set():
    pg = NormalizationPlayground(kind="batch", sample=1, channel=2)
    try:
        p = pg.plotted()
        assert p["n_shared"] == 4 * 14 * 14  # all samples of channel 2
        assert not p["dimmed"][:, 2].any() and p["dimmed"][:, [0, 1, 3, 4, 5]].all()
        assert p["cube"] == pytest.approx((0, 1, 2 / 6, 3 / 6))
        np.testing.assert_allclose(p["mean"], p["x"].mean(axis=(0, 2, 3)))
        pg.set(kind="layer")
        p = pg.plotted()
        assert p["n_shared"] == 6 * 14 * 14 and not p["dimmed"][1].any() and p["dimmed"][0].all()
        assert len(p["mean"]) == 4
        pg.set(kind="group", groups=3, channel=5)
        p = pg.plotted()
        assert p["n_shared"] == 2 * 14 * 14 and list(~p["dimmed"][1]) == [0, 0, 0, 0, 1, 1]
        y = p["y"][p["mask"]]
        assert y.mean() == pytest.approx(0, abs=1e-9) and y.std() == pytest.approx(1, abs=1e-3)
        pg.set(source="vectors", kind="instance")
        p = pg.plotted()
        assert p["x"].shape == (8, 16, 1, 1) and p["n_shared"] == 1
        assert np.allclose(p["y"], 0) and "needs H" in pg.info.value
        assert pg.controls["groups"].options == (1, 2, 4, 8, 16)
        _png_ok(pg._repr_mimebundle_())
    finally:
        pg.close()


# -- ScalingExplorer ------------------------------------------------------------------------


def test_scalers():
    X = np.random.default_rng(0).normal(size=(100, 2)) * [1, 50] + [3, -7]
    mm = scale_features(X, "min-max")
    assert mm.min(0) == pytest.approx([0, 0]) and mm.max(0) == pytest.approx([1, 1])
    st = scale_features(X, "standardized")
    assert st.mean(0) == pytest.approx([0, 0], abs=1e-12) and st.std(0) == pytest.approx([1, 1])
    rb = scale_features(X, "robust")
    q1, med, q3 = np.percentile(rb, [25, 50, 75], axis=0)
    assert med == pytest.approx([0, 0], abs=1e-12) and (q3 - q1) == pytest.approx([1, 1])
    with pytest.raises(ValueError, match="method must be one of"):
        scale_features(X, "log")


def test_scaling_explorer_runs_the_lessons_gradient_descent():
    # one home: the widget's paths are experiments.scaling.gradient_descent on the centred
    # data (the intercept solved exactly), not a copy of it
    se = ScalingExplorer(lr=0.3, steps=12)
    try:
        p = se.problems["standardized"]
        path, _ = gradient_descent(p["Xc"], p["yc"], 0.3, 12)
        np.testing.assert_allclose(se.plotted()["standardized"]["path"], path)
        np.testing.assert_allclose(p["Xc"].mean(0), 0, atol=1e-12)
    finally:
        se.close()


def test_scaling_explorer_condition_numbers_and_learning_rate():
    se = ScalingExplorer(lr=0.5, steps=30)
    try:
        p = se.plotted()
        assert p["raw"]["kappa"] > 1e3 and p["standardized"]["kappa"] < 2
        assert p["raw"]["diverged"] and not p["standardized"]["diverged"]
        assert p["standardized"]["loss_gap"] < 1e-6
        assert p["raw"]["X"][:, 1].std() > 50 * p["raw"]["X"][:, 0].std()
        se.set(lr=1e-4)  # small enough for raw: now it crawls instead of diverging
        q = se.plotted()
        assert not q["raw"]["diverged"] and q["raw"]["loss_gap"] > 1e-2
        length = np.linalg.norm(np.diff(q["standardized"]["path"], axis=0), axis=1).sum()
        full = np.linalg.norm(np.diff(p["standardized"]["path"], axis=0), axis=1).sum()
        assert length < 0.1 * full  # a smaller step moves less
        se.set(lr_mode="tuned")  # each at its own 1/L: conditioning alone decides
        t = se.plotted()
        assert not any(r["diverged"] for r in t.values())
        assert t["raw"]["loss_gap"] > 100 * max(t["standardized"]["loss_gap"], 1e-12)
        se.set(outliers=True)
        o = se.plotted()
        assert o["robust"]["kappa"] > p["robust"]["kappa"]
        assert o["standardized"]["kappa"] < 2  # unit variances whatever the outliers
        _png_ok(se._repr_mimebundle_())
    finally:
        se.close()


def test_widgets_do_not_use_pyplot():
    before = plt.get_fignums()
    for cls in (NormalizationPlayground, ScalingExplorer):
        w = cls()
        w.close()
    assert plt.get_fignums() == before
