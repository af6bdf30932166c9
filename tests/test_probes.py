"""ActivationProbe and UpdateRatio record exactly what a per-step NumPy computation gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import course_utils as cu
from course_utils import probes
from course_utils.probes import STAT_KEYS, ActivationProbe, UpdateRatio, layer_stats


@pytest.fixture(scope="module")
def data():
    return cu.load_mnist()


def _spy(model):
    """Independent record of each activation module's input, output and output gradient."""
    rec = {}

    def make(i):
        def hook(module, inputs, output):
            if not module.training:
                return
            rec.setdefault(i, []).append(
                [inputs[0].detach().clone(), output.detach().clone(), None]
            )
            entry = rec[i][-1]

            def grad_hook(g):
                entry[2] = g.clone()

            if output.requires_grad:
                output.register_hook(grad_hook)

        return hook

    handles = [b.act.register_forward_hook(make(i)) for i, b in enumerate(model.blocks)]
    return rec, handles


def _train(model, data, steps, batch=32, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        xb = data.x_train[s * batch : (s + 1) * batch]
        yb = data.y_train[s * batch : (s + 1) * batch]
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_statistics_match_numpy_per_step(data, activation):
    model = cu.make_mlp(depth=3, width=40, activation=activation, init_scale=3.0)
    probe = ActivationProbe(model, hist_every=2, inputs=True, grad_range=(-0.01, 0.01))
    rec, _ = _spy(model)
    _train(model, data, 6)
    assert probe.steps == 6
    got = {k: probe.stat(k) for k in STAT_KEYS}
    edges = probe.edges.numpy()
    for i in range(3):
        for s in range(6):
            inp, out, grad = (t.numpy().ravel() for t in rec[i][s])
            np.testing.assert_allclose(got["mean"][s, i], out.mean(), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(got["std"][s, i], out.std(ddof=1), rtol=1e-4)
            np.testing.assert_allclose(got["in_std"][s, i], inp.std(ddof=1), rtol=1e-4)
            np.testing.assert_allclose(got["in_mean"][s, i], inp.mean(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got["grad_std"][s, i], grad.std(ddof=1), rtol=1e-3)
            if activation == "tanh":
                assert got["saturated"][s, i] == pytest.approx(np.mean(np.abs(out) > 0.97))
            elif activation == "sigmoid":
                assert got["saturated"][s, i] == pytest.approx(np.mean((out < 0.03) | (out > 0.97)))
            else:
                per_unit = rec[i][s][1].numpy().max(axis=0)
                assert got["dead"][s, i] == pytest.approx(np.mean(per_unit <= 0))
                assert got["saturated"][s, i] == 0
            if s % 2 == 0:  # a histogram step: exact percentiles and counts
                k = [int(q * (out.size - 1)) for q in (0.15, 0.5, 0.85)]
                np.testing.assert_allclose(
                    [got["p15"][s, i], got["p50"][s, i], got["p85"][s, i]], np.sort(out)[k]
                )
                counts = np.histogram(np.clip(out, edges[0], edges[-1]), bins=edges)[0]
                np.testing.assert_array_equal(probe.histograms(s)[i], counts)
                assert probe.grad_histograms(s)[i].sum() == grad.size
            else:
                assert np.isnan(got["p50"][s, i])
                # the latest histogram at or before an in-between step
                np.testing.assert_array_equal(probe.histograms(s)[i], probe.histograms(s - 1)[i])


def test_many_steps_flush_in_batches_without_loss(data):
    # more pending tensors than one flush holds: the batched path must keep every step
    model = cu.make_mlp(depth=2, width=20, activation="tanh")
    probe = ActivationProbe(model)
    rec, _ = _spy(model)
    steps = probes._FLUSH_ROWS // 2 + 40
    _train(model, data, steps, batch=16)
    std = probe.stat("std")
    assert std.shape == (steps, 2)
    ref = np.array([[rec[i][s][1].numpy().std(ddof=1) for i in range(2)] for s in range(steps)])
    np.testing.assert_allclose(std, ref, rtol=1e-4)
    assert not np.isnan(probe.stat("grad_std")).any()


def test_grad_every_and_eval_passes(data):
    model = cu.make_mlp(depth=2, width=20)
    probe = ActivationProbe(model, grad_every=3, inputs=True)
    _train(model, data, 7)
    for key in ("grad_std", "in_std"):
        g = probe.stat(key)
        assert np.isfinite(g[::3]).all()
        assert np.isnan(np.delete(g, np.s_[::3], axis=0)).all()
    assert np.isfinite(probe.stat("std")).all()
    cu.evaluate(model, data.x_test[:100], data.y_test[:100])  # eval mode: not recorded
    assert probe.steps == 7
    with ActivationProbe(model, record_eval=True, track_grads=False) as p2:
        cu.evaluate(model, data.x_test[:100], data.y_test[:100], batch_size=50)
        assert p2.steps == 2


def test_latest_records_clear_and_remove(data):
    model = cu.make_mlp(depth=2, width=20, activation="tanh")
    probe = ActivationProbe(model, bins=10)
    _train(model, data, 3)
    latest = probe.latest()
    assert set(latest) == {"block0", "block1"}
    assert latest["block1"].std == pytest.approx(probe.stat("std")[-1, 1])
    assert latest["block0"].hist.shape == (10,)
    assert len(probe.records["block0"]) == 3
    assert probe.histograms().shape == (2, 10)
    steps, counts = probe.histograms_over_time()
    assert list(steps) == [0, 1, 2] and counts.shape == (3, 2, 10)
    probe.clear()
    assert probe.steps == 0 and probe.stat("std").shape == (0, 2)
    _train(model, data, 2)
    assert probe.steps == 2
    probe.remove()
    assert all(not b.act._forward_hooks for b in model.blocks)
    _train(model, data, 2)
    assert probe.steps == 2  # nothing recorded after remove()
    with pytest.raises(KeyError):
        probe.stat("nope")


def test_cnn_probe_dead_channels():
    model = cu.make_cnn(channels=(4, 8), activation="relu")
    probe = ActivationProbe(model)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        model.blocks[0].conv.bias.fill_(-100.0)  # every channel of layer 1 is dead
    model(x).sum().backward()
    assert probe.stat("dead")[0, 0] == 1.0
    assert probe.histograms().shape == (2, 40)


def test_layer_stats_agrees_with_probe():
    a = torch.tanh(3 * torch.randn(64, 100))
    st = layer_stats(a, "tanh", torch.linspace(-1, 1, 21))
    x = a.numpy().ravel()
    assert st.std == pytest.approx(x.std(ddof=1), rel=1e-4)
    assert st.saturated == pytest.approx(np.mean(np.abs(x) > 0.97))
    assert st.hist.sum() == x.size
    assert st.p50 == pytest.approx(np.sort(x)[int(0.5 * (x.size - 1))])


def test_update_ratio_matches_direct_computation(data):
    model = cu.make_mlp(depth=3, width=30)
    ratio = UpdateRatio(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(data.x_train[:64]), data.y_train[:64])
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ratio.before_step()
    opt.step()
    out = ratio.after_step()
    assert list(out) == [n for n, p in model.named_parameters() if p.dim() >= 2]
    for name, value in out.items():
        p = dict(model.named_parameters())[name].detach()
        ref = float((p - before[name]).std() / (before[name].std() + 1e-12))
        assert value == pytest.approx(ref, rel=1e-5)
    assert ratio.history == [out]
    with pytest.raises(RuntimeError):
        UpdateRatio(model).after_step()
