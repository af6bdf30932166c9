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


# -- fitting the page, and what a redraw renders ------------------------------------------


def _live(widget, ratio: float = 1.0, room: int = 0):
    """Pretend a page shows the widget: frames are rendered (and sent nowhere)."""
    canvas = widget.view.widget
    canvas.live = True
    canvas.ratio = ratio
    sent = []
    canvas.show_frame = lambda png, css: sent.append((png, css))
    if room:
        canvas.room = room
    widget.view.redraw(full=True)
    return sent


@pytest.mark.parametrize("cls", [ActivationExplorer, NormalizationPlayground, ScalingExplorer])
@pytest.mark.parametrize("room", [600, 700, 848, 1300])
def test_figures_fit_the_room_the_page_reports(cls, room):
    w = cls()
    try:
        sent = _live(w, room=room)
        width, height = w.view.css_size
        assert width == min(max(room - 2, 640), 1100)  # fits down to 640 px, at most 1100
        assert sent[-1][1] == (width, height) and w.view.widget.size == (width, height)
        fig = w.view.figure
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_fontsize")) if t.get_visible()]
        texts = [
            t for t in texts if t.get_text().strip() and (t.axes is None or t.axes.get_visible())
        ]
        assert min(t.get_fontsize() for t in texts) >= 10  # points (CSS points at 96 dpi)
        for ax in fig.axes:  # nothing cut off at the figure's edges: ticks, labels, titles
            if ax.get_visible():
                box = ax.get_tightbbox(renderer)
                assert box.x0 >= -1 and box.x1 <= fig.bbox.x1 + 1, (ax.get_title(), box)
                assert box.y0 >= -1 and box.y1 <= fig.bbox.y1 + 1, (ax.get_title(), box)
        assert w.view.spills() == []  # each group's pixels stay in its region
    finally:
        w.close()


def test_explorer_fits_650_px_with_its_controls():
    ex = ActivationExplorer()
    try:
        _live(ex, room=848)
        assert ex.view.css_size[1] <= 480  # + ~150 px of controls: about 630 px in all
    finally:
        ex.close()


def test_control_changes_render_only_what_changed(explorer):
    _live(explorer)
    view = explorer.view
    full, partial = view.full_draws, view.partial_draws
    for key, value in [("norm", "batch"), ("lr", 0.2), ("width", 64), ("depth", 6),
                       ("depth", 4), ("init_scale", 2.0), ("batch_size", 32)]:  # fmt: skip
        explorer.controls[key].value = value
    assert view.full_draws == full  # never the whole figure
    explorer.controls["activation"].value = "relu"  # a new histogram range: that panel
    assert view.full_draws == full and view.partial_draws <= partial + 3
    pg = NormalizationPlayground()
    try:
        _live(pg)
        full, partial = pg.view.full_draws, pg.view.partial_draws
        for kind in ["layer", "instance", "group", "batch"]:
            pg.controls["kind"].value = kind  # the kind toggle renders the bar chart's axes
        assert pg.view.full_draws == full and pg.view.partial_draws == partial + 4
        pg.controls["channel"].value = 3  # the entry: no axes at all
        assert pg.view.partial_draws == partial + 4
    finally:
        pg.close()


@pytest.mark.parametrize("cls, changes", [
    (NormalizationPlayground, [("kind", "layer"), ("source", "images"), ("kind", "group")]),
    (ScalingExplorer, [("lr", 1e-3), ("outliers", True), ("lr_mode", "tuned")]),
    (ActivationExplorer, [("activation", "relu"), ("depth", 6), ("view", "over time")]),
])  # fmt: skip
def test_partly_rendered_frame_equals_a_full_render(cls, changes):
    w = cls()
    try:
        _live(w)
        for key, value in changes:
            w.set(**{key: value})
        view = w.view
        view.render(scale=1.0)
        partial = np.asarray(view.figure.canvas.buffer_rgba()).copy()
        view.render(full=True, scale=1.0)
        full = np.asarray(view.figure.canvas.buffer_rgba())
        assert np.mean(np.any(partial != full, axis=-1)) < 1e-3
    finally:
        w.close()


def test_live_frames_are_low_resolution_and_skipped_when_the_page_lags(explorer):
    sent = _live(explorer, ratio=2.0)
    canvas, view = explorer.view.widget, explorer.view
    width, height = view.css_size
    assert view.figure.canvas.get_renderer().width == 2 * width  # idle: the screen's pixels
    explorer.session.train(10)
    explorer._refresh(evaluate=False, live=True)
    assert view.figure.canvas.get_renderer().width == width  # training: 1 px per CSS px
    n = len(sent)
    canvas.frames_sent, canvas.frames_drawn = 10, 8  # the page is two frames behind
    explorer._refresh(evaluate=False, live=True)
    assert len(sent) == n and view.frames_skipped == 1
    canvas._handle_message(canvas, {"type": "drawn", "seq": 10}, [])
    explorer._refresh(evaluate=False, live=True)
    assert len(sent) == n + 1
    explorer._refresh()  # after training: full resolution again
    assert view.figure.canvas.get_renderer().width == 2 * width
    png = Image.open(io.BytesIO(sent[-1][0]))
    assert png.size == (2 * width, 2 * height) and sent[-1][1] == (width, height)


def test_sliders_reach_every_useful_value(explorer):
    from course_utils.widgets.explorer import _INIT_SCALES, _LRS

    values = [v for _, v in explorer.controls["init_scale"].options]
    assert set(_INIT_SCALES) <= set(values) and len(values) == len(_INIT_SCALES)
    assert [v for _, v in explorer.controls["lr"].options] == sorted(_LRS)
    explorer.set(init_scale=0.37, lr=10**0.5)  # any value from Python stays exact
    assert explorer.config.init_scale == 0.37 and explorer.config.lr == 10**0.5
    with pytest.raises(KeyError, match="unknown controls"):
        explorer.set(momentum=0.9)


def test_canvas_says_hello_and_gets_a_frame(explorer):
    canvas = explorer.view.widget
    sent = []
    canvas.show_frame = lambda png, css: sent.append(css)
    assert not explorer.view.live
    canvas._handle_message(canvas, {"type": "hello"}, [])  # a page shows the widget
    assert explorer.view.live and len(sent) == 1
