"""The ensemble engine (course_utils.ensemble) and the lessons' ensembles built on it.

The equivalence checks the notebooks of lessons 04-07 used to show (``*_matches_torch``,
``sweep_matches_module``) live here: every member of an ensemble computes, to float64
rounding, what its module computes when trained alone with ``torch.optim``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import ensemble as E
from course_utils.experiments import group_norm as G
from course_utils.experiments import sequence as Q
from course_utils.experiments import small_batch as S
from course_utils.models import make_cnn, make_mlp
from course_utils.training import recalibrate_bn


def _batches(k, shape, steps=3, shared=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lead = () if shared else (k,)
    return [
        (
            torch.randn(*lead, *shape, generator=g, dtype=dtype),
            torch.randint(0, 10, (*lead, shape[0]), generator=g),
        )
        for _ in range(steps)
    ]


# ------------------------------------------------------------------------------------------
# the engine
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [("sgd", {"momentum": 0.9}), ("adam", {})])
@pytest.mark.parametrize("shared", [False, True])
def test_members_train_exactly_like_their_modules(name, kwargs, shared):
    def models():
        return [
            make_mlp(depth=2, width=8, in_features=6, norm=n, num_groups=2, seed=s).double()
            for n in ("batch", "layer", "group", "none")
            for s in (0, 1)
        ]

    lrs = [0.1, 0.03, 0.2, 0.05, 0.3, 0.01, 0.1, 0.02]
    err = E.matches_members(models, 2, _batches(8, (5, 6), shared=shared), lrs, name, **kwargs)
    assert err < 1e-10


def test_the_lessons_equivalence_checks():
    assert S.ensemble_matches_torch() < 1e-9  # MLPs: BN, LN, GN, batch renorm
    assert G.ensemble_matches_torch() < 1e-9  # CNNs: BN, GN
    assert Q.sweep_matches_module() < 1e-5  # RNNs with Adam, float32 losses


def test_members_are_grouped_by_architecture_and_returned_in_order():
    norms = ["batch", "batch", "layer", "batch"]
    models = [
        make_mlp(depth=1, width=4, in_features=3, norm=n, seed=i) for i, n in enumerate(norms)
    ]
    ens = E.Ensemble(models, input_dim=2)
    assert [g.k for g in ens.groups] == [2, 1, 1] and ens.k == 4
    x = torch.randn(4, 5, 3)
    ens.eval()
    out = ens(x)
    for k, model in enumerate(models):
        model.eval()
        torch.testing.assert_close(out[k], model(x[k]))
        torch.testing.assert_close(ens.member(k)(x[k]), model(x[k]))
    torch.testing.assert_close(ens(x[0])[2], models[2](x[0]))  # a shared input
    with pytest.raises(ValueError, match="expected one input"):
        ens(torch.randn(3, 5, 3))


def test_a_diverged_member_leaves_the_others_alone():
    models = [make_mlp(depth=1, width=4, in_features=3, seed=s) for s in range(3)]
    ens = E.Ensemble(models, input_dim=2)
    with torch.no_grad():
        ens.groups[0].net.head.weight[1, 0, 0] = float("nan")  # member 1 has diverged
    opt = E.MemberOptimizer(ens, [0.1, 0.1, 0.1], momentum=0.9)
    x, y = torch.randn(3, 8, 3), torch.randint(0, 10, (3, 8))
    for _ in range(3):
        losses = opt.step_on(x, y)
    assert torch.isnan(losses[1]) and torch.isfinite(losses[[0, 2]]).all()
    assert ens.diverged().tolist() == [False, True, False]
    acc = E.accuracy(ens, x[0], y[0])
    assert acc[1] == 0
    alone = make_mlp(depth=1, width=4, in_features=3, seed=2)
    sgd = torch.optim.SGD(alone.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = nn.functional.cross_entropy(alone(x[2]), y[2])
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    torch.testing.assert_close(ens.member(2).head.weight, alone.head.weight)
    assert float(acc[2]) == float((alone(x[0]).argmax(1) == y[0]).float().mean())


def test_recalibrate_bn_on_an_ensemble_equals_each_member_alone():
    models = [make_cnn(channels=(3,), norm="batch", image_size=8, seed=s) for s in (0, 1)]
    models.append(make_cnn(channels=(3,), norm="group", num_groups=3, image_size=8, seed=2))
    ens = E.Ensemble(models, input_dim=4)
    x = torch.randn(40, 1, 8, 8) * 2 + 1
    ens.train()
    ens(x[:10])  # running statistics that are not the plain average
    ens.eval()
    recalibrate_bn(ens, x, batch_size=16)  # two full batches of 16; 8 left out
    assert not ens.training
    for k in range(2):
        alone = recalibrate_bn(ens.member(k), x, batch_size=16)
        torch.testing.assert_close(
            ens.groups[0].net.blocks[0].norm.running_var[k], alone.blocks[0].norm.running_var
        )
    assert ens.groups[0].net.blocks[0].norm.momentum == 0.1


def test_eval_mode_uses_running_statistics():
    members = [G.Member("batch", 0.1, 0), G.Member("group", 0.1, 0, groups=2)]
    ens = G.CNNEnsemble(members, channels=(4, 4), image_size=8)
    x = torch.randn(6, 1, 8, 8)
    ens.train()
    ens(x)
    bn = ens.groups[0].net.blocks[0].norm
    assert bn.running_mean.shape == (1, 4) and not torch.equal(bn.running_mean[0], torch.zeros(4))
    ens.eval()
    torch.testing.assert_close(ens(x[:1]), ens(x)[:, :1], atol=1e-5, rtol=1e-5)


def test_dropout_masks_differ_between_members_and_are_seeded():
    def trained():
        ens = S.MLPEnsemble(["none"] * 2, [0.1, 0.1], [0, 0], dropout=[0.5, 0.5])
        d = S.mnist14()
        return S.train_ensemble(ens, d.x_train[:64], d.y_train[:64], 8, 32, [0, 0])

    a, b = trained(), trained()
    wa = a.groups[0].net.head.weight
    assert not torch.equal(wa[0], wa[1])  # same init and data, different masks
    assert torch.equal(wa, b.groups[0].net.head.weight)  # reproducible


def test_renorm_at_limits_1_0_is_batch_norm_and_members_are_independent():
    d = S.mnist14()
    x, y = d.x_train, d.y_train
    a = S.MLPEnsemble(["batch", "renorm", "layer"], [0.05] * 3, [0, 0, 1], rmax=1.0, dmax=0.0)
    S.train_ensemble(a, x, y, 8, 160, [0, 0, 1])
    bn, rn, ln = (a.member(k) for k in range(3))
    for p_bn, p_rn in zip(bn.parameters(), rn.parameters()):
        torch.testing.assert_close(p_bn, p_rn, atol=1e-5, rtol=0)
    alone = S.MLPEnsemble(["layer"], [0.05], [1])
    S.train_ensemble(alone, x, y, 8, 160, [1])
    torch.testing.assert_close(alone.member(0).blocks[0].linear.weight, ln.blocks[0].linear.weight)


def test_mlp_members_are_the_lessons_networks():
    m = S.mlp_member("renorm", 0, width=8, in_features=5)
    assert isinstance(m.blocks[0].norm, S.BatchRenorm1d) and m.blocks[0].linear.bias is None
    ghost = S.mlp_member("batch", 0, width=8, in_features=5, ghost=4)
    assert type(ghost.blocks[1].norm).__name__ == "GhostBatchNorm1d"
    drop = S.mlp_member("layer", 0, width=8, in_features=5, dropout=0.3)
    assert isinstance(drop.blocks[0].drop, nn.Dropout) and drop.blocks[0].linear.bias is not None
    with pytest.raises(ValueError, match="kind must be one of"):
        S.mlp_member("instance", 0)


def test_sweep_accuracies_are_numpy_per_member():
    d = S.mnist14()
    ens = S.MLPEnsemble(["batch", "group"], [0.1, 0.1], [0, 1], width=8)
    S.train_ensemble(ens, d.x_train, d.y_train, 16, 160, [0, 1])
    acc, loss = ens.accuracy(d.x_val, d.y_val), ens.loss(d.x_val, d.y_val)
    assert isinstance(acc, np.ndarray) and acc.shape == loss.shape == (2,)
    x, y = torch.tensor(d.x_val), torch.tensor(d.y_val)
    for k in range(2):
        with torch.no_grad():
            logits = ens.member(k).eval()(x)
        assert acc[k] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
        assert loss[k] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-5)


def test_importing_the_runtime_never_imports_answers_or_references():
    """The grader's sandbox has neither; notebooks' setup cells import these modules there."""
    code = (
        "import sys, pkgutil, importlib\n"
        "import course_utils, course_utils.ensemble\n"
        "from course_utils import experiments\n"
        "mine = ['small_batch', 'group_norm', 'sequence', 'covariate_shift', 'bn_sweeps',\n"
        "        'scaling', 'placement', 'practice', 'residual', 'capstone', 'guide',\n"
        "        'transformer', 'weight_norm', 'timing']\n"
        "for m in mine: importlib.import_module('course_utils.experiments.' + m)\n"
        "bad = [m for m in sys.modules if m.startswith(('course_utils.reference',\n"
        "       'course_utils.answers', 'course_utils.grading'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
