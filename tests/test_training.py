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
