import math

import torch

from course_utils import evaluate, load_mnist, make_mlp, train


def test_training_learns_and_is_deterministic():
    d = load_mnist()
    h1 = train(make_mlp(depth=2, width=32, seed=0), d, steps=150, lr=0.1, eval_every=50)
    h2 = train(make_mlp(depth=2, width=32, seed=0), d, steps=150, lr=0.1, eval_every=50)
    assert h1.loss == h2.loss and h1.test_acc == h2.test_acc
    assert h1.eval_steps == [50, 100, 150]
    assert h1.final_acc > 0.8 and h1.loss[-1] < h1.loss[0]
    assert h1.steps_to(0.5) == 50 and h1.steps_to(1.01) is None


def test_divergence_is_reported():
    d = load_mnist("raw")
    h = train(make_mlp(depth=3, width=32, activation="relu"), d, steps=100, lr=10.0)
    assert h.diverged and not math.isfinite(h.loss[-1])


def test_evaluate_restores_mode_and_running_stats():
    d = load_mnist()
    m = make_mlp(depth=2, width=16, norm="batch")
    m.train()
    before = m.blocks[0].norm.running_mean.clone()
    loss, acc = evaluate(m, d.x_test[:200], d.y_test[:200], train_mode=True)
    assert m.training and torch.equal(before, m.blocks[0].norm.running_mean)
    assert 0 <= acc <= 1 and loss > 0


def test_recalibrate_bn_is_a_plain_average_over_full_batches():
    from course_utils.training import recalibrate_bn

    model = make_mlp(depth=2, width=16, norm="batch", seed=0)
    model.train()
    model.blocks[1].norm.eval()  # a frozen layer stays frozen
    weights = [p.clone() for p in model.parameters()]
    x = torch.randn(70, 784) * 2 + 3  # three batches of 20, then 10 left over
    assert recalibrate_bn(model, x, batch_size=20) is model
    assert model.training and model.blocks[0].norm.training and not model.blocks[1].norm.training
    assert all(m.momentum == 0.1 for m in (model.blocks[0].norm, model.blocks[1].norm))
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    with torch.no_grad():
        z = model.blocks[0].linear(x)
    bn = model.blocks[0].norm
    means = torch.stack([z[i : i + 20].mean(0) for i in (0, 20, 40)]).mean(0)
    variances = torch.stack([z[i : i + 20].var(0) for i in (0, 20, 40)]).mean(0)  # unbiased
    torch.testing.assert_close(bn.running_mean, means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, variances, atol=1e-4, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 3


def test_recalibrate_bn_with_fewer_samples_than_a_batch_uses_them_all():
    from course_utils.training import recalibrate_bn

    model = make_mlp(depth=1, width=8, norm="batch", seed=0).eval()
    x = torch.randn(12, 784)
    recalibrate_bn(model, x, batch_size=50)
    with torch.no_grad():
        z = model.blocks[0].linear(x)
    torch.testing.assert_close(model.blocks[0].norm.running_mean, z.mean(0))
    assert not model.training


def test_recalibrate_bn_keeps_the_other_modules_mode():
    from torch import nn

    from course_utils.training import recalibrate_bn

    model = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).eval()
    x = torch.randn(40, 6) * 3
    recalibrate_bn(model, x, batch_size=20)  # dropout stays off: eval mode's statistics
    with torch.no_grad():
        z = model[0](x)
    torch.testing.assert_close(model[2].running_mean, z.mean(0))
    assert not model.training and not model[1].training and not model[2].training
