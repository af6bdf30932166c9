"""The four measurements prepared for lessons 02, 03, 05, 08 and 09 (course_utils.experiments:
init_gradients, effective_lr, smoothness, variance_shift): shapes, the mechanisms they rely on,
and the measured effect on small, fast settings."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from course_utils.experiments import effective_lr, init_gradients, smoothness, variance_shift

# ----------------------------------------------------------------------------------------------
# gradient explosion at initialisation (Yang et al. 2019)
# ----------------------------------------------------------------------------------------------


def test_gradient_norms_have_one_entry_per_weight_matrix():
    for arch in init_gradients.ARCHITECTURES:
        norms = init_gradients.weight_gradient_norms(arch, depth=8, width=32, batch_size=16)
        assert norms.shape == (8,) and np.isfinite(norms).all() and (norms > 0).all()
    with pytest.raises(ValueError, match="arch"):
        init_gradients.weight_gradient_norms("layer")
    with pytest.raises(ValueError, match="even"):
        init_gradients.weight_gradient_norms("residual", depth=7)


def test_growth_per_layer_reads_a_geometric_sequence():
    norms = np.sqrt(1.5 ** np.arange(20)[::-1])  # squared norm grows 1.5x per layer inputwards
    assert init_gradients.growth_per_layer(norms) == pytest.approx(1.5)
    assert init_gradients.growth_per_layer(np.ones(10)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least"):
        init_gradients.growth_per_layer(np.ones(4))


def test_batch_norm_stack_explodes_at_the_mean_field_rate_and_skips_tame_it():
    bn = init_gradients.weight_gradient_norms("batch", depth=30, width=128, seed=0)
    res = init_gradients.weight_gradient_norms("residual", depth=30, width=128, seed=0)
    growth = init_gradients.growth_per_layer(bn)
    assert abs(growth / init_gradients.MEAN_FIELD_GROWTH - 1) < 0.05
    assert bn[0] / bn[-1] > 10 * res[0] / res[-1]


# ----------------------------------------------------------------------------------------------
# scale invariance and the effective learning rate
# ----------------------------------------------------------------------------------------------


def test_equilibrium_formula():
    assert effective_lr.equilibrium_angular_update(0.1, 5e-3, 0.9) == pytest.approx(
        math.sqrt(2 * 0.1 * 5e-3 / 1.9)
    )


def test_the_probed_layer_is_scale_invariant():
    """The mechanism: scaling W before batch norm leaves the loss unchanged and divides the
    gradient by the scale."""
    from course_utils import load_mnist, make_mlp

    data = load_mnist()
    x, y = data.x_train[:64], data.y_train[:64]
    grads, losses = [], []
    for k in (1.0, 4.0):
        m = make_mlp(depth=2, width=32, norm="batch", seed=0)
        with torch.no_grad():
            m.blocks[1].linear.weight.mul_(k)
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.item())
        grads.append(m.blocks[1].linear.weight.grad.norm().item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    assert grads[0] / grads[1] == pytest.approx(4.0, rel=1e-3)


def test_weight_decay_shrinks_the_norm_and_raises_the_angular_update():
    kw = dict(steps=200, width=64, record_every=20, seed=0)
    free = effective_lr.track_weight_norm(0.0, **kw)
    decayed = effective_lr.track_weight_norm(1e-2, **kw)
    assert free.norm.shape == free.angle.shape == free.steps.shape == (10,)
    assert free.norm[-1] > free.norm[0] and decayed.norm[-1] < 0.5 * decayed.norm[0]
    assert decayed.late_angle() > 3 * free.late_angle()


# ----------------------------------------------------------------------------------------------
# smoothness along the gradient (Santurkar et al. 2018)
# ----------------------------------------------------------------------------------------------


def test_probe_leaves_the_model_as_it_was():
    from course_utils import load_mnist, make_mlp

    data = load_mnist()
    m = make_mlp(depth=3, width=16, norm="batch", seed=0)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    out = smoothness._probe(m, data.x_train[:32], data.y_train[:32], 0.1, (0.5, 2.0))
    assert all(np.isfinite(out)) and out[0] >= 0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


def test_batch_norm_reduces_loss_variation_and_gradient_change():
    kw = dict(depth=6, width=100, lr=0.1, steps=100, probe_every=25, seed=0)
    plain = smoothness.landscape_probe("none", **kw).summary()
    bn = smoothness.landscape_probe("batch", **kw).summary()
    assert plain["loss_variation"] > 2 * bn["loss_variation"]
    assert plain["grad_change"] > 2 * bn["grad_change"]
    with pytest.raises(ValueError, match="norm"):
        smoothness.landscape_probe("layer")


# ----------------------------------------------------------------------------------------------
# dropout before batch norm: the variance shift (Li et al. 2019)
# ----------------------------------------------------------------------------------------------


def test_dropout_placements():
    before = variance_shift.dropout_mlp("before_bn", depth=3, width=16)
    after = variance_shift.dropout_mlp("after_bn", depth=3, width=16)
    assert sum(isinstance(m, nn.Dropout) for m in before.modules()) == 2
    assert isinstance(after.head[0], nn.Dropout)
    with pytest.raises(ValueError, match="placement"):
        variance_shift.dropout_mlp("everywhere")


def test_variance_ratio_is_one_for_statistics_of_the_same_data():
    from course_utils import load_mnist

    x = load_mnist().x_test
    m = variance_shift.dropout_mlp("after_bn", width=32)
    variance_shift._recalibrate(m, x, batch_size=500)  # running stats = eval-time stats of x
    ratios = variance_shift.variance_ratios(m, x)
    assert ratios.shape == (3,) and np.allclose(ratios, 1.0, atol=0.01)


def test_dropout_before_batch_norm_inflates_the_running_variance():
    kw = dict(width=64, steps=150, seed=0)
    before = variance_shift.variance_shift_experiment("before_bn", **kw)
    after = variance_shift.variance_shift_experiment("after_bn", **kw)
    assert before.shifted_ratio > 1.1 and abs(after.shifted_ratio - 1) < 0.1


def test_time_samples_interleave_and_count_cpu_time_not_waiting():
    import time

    from course_utils.experiments.timing import CLOCK, median_times, time_samples

    order = []
    s = time_samples({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, 2, 1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up, then rounds in turn
    assert s["a"].shape == (3,)
    if CLOCK is time.thread_time:  # sleeping costs no CPU: a busy machine's waits don't count
        t = median_times({"sleep": lambda: time.sleep(0.02), "spin": lambda: sum(range(20000))})
        assert t["sleep"] < 0.005  # a wall clock would read 0.02
