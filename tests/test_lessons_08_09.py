"""Lessons 08 (placement) and 09 (best practices): the experiment modules, the decision guide,
and the exercises (reference passes visible and hidden cases; typical mistakes get the
specific verdict)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from course_utils import load_mnist, make_mlp
from course_utils.answers import lesson08 as A7
from course_utils.answers import lesson09 as A8
from course_utils.exercises import get_exercise, verify
from course_utils.exercises import lesson09 as L8
from course_utils.experiments import capstone, guide, placement, practice, residual, transformer
from course_utils.experiments import weight_norm as wn

# ----------------------------------------------------------------------------------------------
# guide.recommend and the chooser
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(guide.ARCHITECTURES))
@pytest.mark.parametrize("batch", [1, 2, 8, 16, 64, 256])
def test_recommend_answers_every_case_with_reasons_and_lessons(arch, batch):
    r = guide.recommend(arch, batch)
    assert r.norm and r.placement and r.reasons and r.lessons
    assert all(len(lesson) == 2 and lesson.isdigit() and int(lesson) <= 11 for lesson in r.lessons)
    text = r.to_text()
    assert r.norm in text and "lesson" in text
    assert r.norm in r._repr_html_()


@pytest.mark.parametrize(
    "arch, batch, expected",
    [
        ("cnn", 64, "BatchNorm"),
        ("cnn", guide.SMALL_BATCH, "BatchNorm"),
        ("cnn", guide.SMALL_BATCH - 1, "GroupNorm"),
        ("detection", 2, "GroupNorm"),
        ("mlp", 128, "BatchNorm"),
        ("mlp", 4, "LayerNorm"),
        ("rnn", 64, "LayerNorm"),
        ("transformer", 1, "LayerNorm"),
        ("transformer", 512, "LayerNorm"),
        ("style_transfer", 8, "InstanceNorm"),
        ("fine_tuning", 2, "frozen"),
        ("fine_tuning", 64, "BatchNorm"),
    ],
)
def test_recommend_rules(arch, batch, expected):
    assert expected in guide.recommend(arch, batch).norm


def test_recommend_transformer_says_pre_ln_and_points_to_lesson_08():
    r = guide.recommend("transformer", 32)
    assert "Pre-LN" in r.placement and "08" in r.lessons


def test_recommend_small_batch_batchnorm_cases_point_to_the_batch_size_lessons():
    for arch in ("cnn", "detection", "mlp"):
        assert {"04", "07"} <= set(guide.recommend(arch, 2).lessons)


@pytest.mark.parametrize("args", [("resnet", 32), ("cnn", 0), ("cnn", -4), ("cnn", 2.5)])
def test_recommend_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        guide.recommend(*args)


def test_chooser_builds_and_reacts():
    box = guide.chooser()
    arch, batch, answer = box.children
    assert "BatchNorm" in answer.value
    arch.value = "transformer"
    assert "Pre-LN" in answer.value
    arch.value = "cnn"
    batch.value = 2
    assert "GroupNorm" in answer.value


# ----------------------------------------------------------------------------------------------
# transformer
# ----------------------------------------------------------------------------------------------


def test_block_orders_differ_and_keep_shape():
    torch.manual_seed(0)
    post = transformer.Block(16, 4, 32, "post")
    pre = transformer.Block(16, 4, 32, "pre")
    pre.load_state_dict(post.state_dict())
    x = torch.randn(2, 5, 16) * 3
    assert post(x).shape == pre(x).shape == (2, 5, 16)
    assert not torch.allclose(post(x), pre(x))
    # Post-LN output is layer-normalized per token; Pre-LN output is not
    assert torch.allclose(post(x).mean(-1), torch.zeros(2, 5), atol=1e-5)
    with pytest.raises(ValueError):
        transformer.Block(16, 4, 32, "middle")
    with pytest.raises(ValueError):
        transformer.SelfAttention(10, 4)


def test_tiny_transformer_shapes_and_custom_block():
    m = transformer.TinyTransformer(vocab=7, seq_len=6, d_model=16, n_heads=2, n_layers=2)
    x, y = transformer.reversal_batch(3, 6, 7, torch.Generator().manual_seed(0))
    assert torch.equal(y, x.flip(1))
    assert m(x).shape == (3, 6, 7)
    custom = transformer.TinyTransformer(
        vocab=7, seq_len=6, d_model=16, n_heads=2, n_layers=2, block=A7.PreLNBlock
    )
    assert isinstance(custom.blocks[0], A7.PreLNBlock) and custom(x).shape == (3, 6, 7)
    assert isinstance(
        transformer.TinyTransformer(norm_position="post", n_layers=1).final_ln, nn.Identity
    )


def test_train_reversal_runs_and_warmup_ramps():
    m = transformer.TinyTransformer(seq_len=8, d_model=16, n_heads=2, n_layers=1)
    r = transformer.train_reversal(
        m, steps=5, lr=1e-3, warmup=3, batch_size=4, seq_len=8, test_size=8
    )
    assert r.loss.shape == (5,) and np.isfinite(r.loss).all() and not r.diverged
    assert 0 <= r.test_acc <= 1 and math.isfinite(r.test_loss)
    assert abs(r.loss[0] - math.log(12)) < 1.5  # starts near the uniform guess


def test_grad_norms_at_init_shapes():
    g = transformer.grad_norms_at_init(
        "post", seeds=(0, 1), batch_size=4, n_layers=3, d_model=16, n_heads=2, seq_len=6
    )
    assert g["attn"].shape == g["ff"].shape == (2, 3) and (g["ff"] > 0).all()


# ----------------------------------------------------------------------------------------------
# residual, placement
# ----------------------------------------------------------------------------------------------


def test_residual_variants_and_fixup_identity_start():
    x = torch.randn(16, 784)
    y = torch.randint(0, 10, (16,))
    for variant in residual.RESIDUAL_VARIANTS:
        for norm in ("batch", "none"):
            assert residual.ResidualMLP(3, 8, variant, norm=norm)(x).shape == (16, 10)
    fix = residual.ResidualMLP(5, 8, "preact", norm="none", init="fixup")
    s = residual.signal_through_depth(fix, x, y)
    assert np.allclose(s["std"], s["std"][0])  # every block starts as the identity
    he = residual.signal_through_depth(residual.ResidualMLP(5, 8, "preact", norm="none"), x, y)
    assert he["std"][-1] > he["std"][0] and he["grad"].shape == (5,)
    with pytest.raises(ValueError):
        residual.ResidualBlock(8, "sideways")
    with pytest.raises(ValueError):
        residual.ResidualMLP(2, 8, init="xavier")


def test_tune_and_confirm_picks_each_arms_best_lr_and_reruns_it():
    calls = []

    def run(arm, lr, seed):
        calls.append((arm, lr, seed))
        best = {"a": 0.1, "b": 0.01}[arm]
        return 1.0 - abs(math.log10(lr / best)) + 0.001 * seed

    t = placement.tune_and_confirm(
        run, ("a", "b"), (0.001, 0.01, 0.1, 1.0), tune_seed=0, confirm_seeds=(1, 2)
    )
    assert t.best_lr == {"a": 0.1, "b": 0.01}
    assert t.bracketed("a") and t.bracketed("b")
    assert ("a", 0.1, 1) in calls and ("b", 0.01, 2) in calls and len(calls) == 2 * (4 + 2)
    assert t.mean("a") == pytest.approx(1.0015) and t.spread("a") == pytest.approx(0.001)
    assert "mean" in t.table()


def test_downsample_halves_images():
    d = placement.downsample(load_mnist(flatten=False))
    assert d.x_train.shape == (8000, 1, 14, 14) and d.x_test.shape == (2000, 1, 14, 14)


# ----------------------------------------------------------------------------------------------
# practice, weight norm
# ----------------------------------------------------------------------------------------------


def test_bias_before_bn_has_no_gradient():
    b = practice.bias_before_bn()
    assert b["bias_grad"] < 1e-5 < b["weight_grad"] and b["output_change"] < 1e-4


def test_low_precision_running_mean_stalls():
    got, ref = practice.running_mean_in(torch.float32, steps=100)
    assert abs(got - ref) < 1e-4 and abs(ref - 5) < 0.05  # float32 follows the exact average
    got, ref = practice.running_mean_in(torch.bfloat16, steps=200)
    assert abs(got - ref) > 0.02  # bfloat16 stalls short of it


def test_is_norm_layer():
    assert all(
        practice.is_norm_layer(m)
        for m in (
            nn.BatchNorm2d(3),
            nn.LayerNorm(3),
            nn.GroupNorm(1, 3),
            nn.InstanceNorm2d(3),
            nn.RMSNorm(3),
        )
    )
    assert not practice.is_norm_layer(nn.Linear(3, 3))


def test_weight_standardization_is_scale_and_shift_invariant():
    torch.manual_seed(0)
    for layer, x in (
        (wn.WSLinear(6, 4), torch.randn(3, 6)),
        (wn.WSConv2d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 5)),
    ):
        with torch.no_grad():
            out = layer(x)
            layer.weight.mul_(5.0).add_(0.3)
            assert torch.allclose(layer(x), out, atol=1e-3 * float(out.abs().max()))


def test_weight_normed_mlp_computes_the_same_function_at_creation():
    x = torch.randn(4, 784)
    plain, normed = make_mlp(seed=3), wn.weight_normed_mlp(seed=3)
    assert torch.allclose(plain(x), normed(x), atol=1e-5)
    assert any("original0" in n for n, _ in normed.named_parameters())


# ----------------------------------------------------------------------------------------------
# capstone machinery
# ----------------------------------------------------------------------------------------------


def _untrained(data, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(
        capstone.Standardize(data.x_train.mean(), data.x_train.std()), nn.Linear(784, 10)
    )
    return model.eval()


def _tiny_batch_bn(data, seed):
    model = nn.Sequential(nn.Linear(784, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    model(data.x_train[:2])  # one training-mode pass on two samples
    return model


def test_measure_reports_each_aspect():
    rep = capstone.measure(_untrained, 0)
    assert (
        rep.in_eval_mode and rep.inputs_scaled and rep.batch_stats_ok and rep.min_bn_batch is None
    )
    assert not rep.reaches_target and rep.model is not None and not rep.error
    bad = capstone.measure(_tiny_batch_bn, 0)
    assert bad.min_bn_batch == 2 and not bad.batch_stats_ok
    assert not bad.in_eval_mode and not bad.inputs_scaled
    assert "nn.Module" in capstone.measure(lambda d, s: 0.5, 0).error


def test_serve_one_at_a_time_shows_the_train_mode_failure():
    data = capstone.load_data()
    model = _tiny_batch_bn(data, 0)
    acc, err = capstone.serve_one_at_a_time(model, data.x_test, data.y_test, limit=3)
    assert math.isnan(acc) and "ValueError" in err
    acc, err = capstone.serve_one_at_a_time(model.eval(), data.x_test, data.y_test, limit=3)
    assert err == "" and 0 <= acc <= 1


# ----------------------------------------------------------------------------------------------
# exercises: the reference passes visible and hidden cases; mistakes get specific verdicts
# ----------------------------------------------------------------------------------------------

CHEAP = [
    "08.assemble_block",
    "08.residual_forward",
    "08.PreLNBlock",
    "09.param_groups",
    "09.recalibrate_bn",
]


@pytest.mark.parametrize("ex_id", CHEAP)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_passes_hidden_cases(ex_id, seed):
    ex = get_exercise(ex_id)
    ref = ex.reference()
    cases = ex.cases(np.random.default_rng(seed), True)
    assert cases
    for case in cases:
        assert ex.judge(ex.run(ref, case), case) is None, case.label


@pytest.mark.parametrize("ex_id", CHEAP)
def test_reference_passes_visible_check(ex_id):
    assert verify(ex_id, get_exercise(ex_id).reference()).passed


def _raises(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("ex_id", CHEAP + ["09.capstone_accuracy"])
def test_placeholder_is_not_started(ex_id):
    assert verify(ex_id, _raises).status == "not started"


def test_assemble_block_mistakes():
    def swapped(l, n, a, p):
        return A7.assemble_block(l, n, a, "after" if p == "before" else "before")

    v = verify("08.assemble_block", swapped)
    assert not v.passed and "placement='after'" in v.message

    def fresh(l, n, a, p):
        return (
            A7.assemble_block(nn.Linear(l.in_features, l.out_features), n, a, p)
            if isinstance(l, nn.Linear)
            else A7.assemble_block(l, n, a, p)
        )

    assert "reuse" in verify("08.assemble_block", fresh).message

    def lenient(l, n, a, p):
        return nn.Sequential(l, n, a) if p != "after" else nn.Sequential(l, a, n)

    assert "ValueError" in verify("08.assemble_block", lenient).message


def test_residual_forward_mistakes():
    def swapped(x, f1, b1, f2, b2, v):
        return A7.residual_forward(x, f1, b1, f2, b2, "preact" if v == "original" else "original")

    assert "swap" in verify("08.residual_forward", swapped).message

    def no_skip(x, f1, b1, f2, b2, v):
        if v == "original":
            return A7.residual_forward(x, f1, b1, f2, b2, v)
        return f2(torch.relu(b2(f1(torch.relu(b1(x))))))

    assert "skip connection" in verify("08.residual_forward", no_skip).message


def test_pre_ln_block_mistakes():
    class Post(A7.PreLNBlock):
        def __init__(self, d, h, f):
            super().__init__(d, h, f)
            self.norm_position = "post"

    assert "Post-LN" in verify("08.PreLNBlock", Post).message

    class Renamed(nn.Module):
        def __init__(self, d, h, f):
            super().__init__()
            self.norm1 = nn.LayerNorm(d)

        def forward(self, x):
            return self.norm1(x)

    v = verify("08.PreLNBlock", Renamed)
    assert not v.passed and "ln1" in v.message


def test_param_groups_mistakes():
    def everything(m, wd):
        return [
            {"params": list(m.parameters()), "weight_decay": wd},
            {"params": [], "weight_decay": 0.0},
        ]

    assert "should not be decayed" in verify("09.param_groups", everything).message

    def twice(m, wd):
        return [
            {"params": list(m.parameters()), "weight_decay": wd},
            {"params": [p for p in m.parameters() if p.ndim == 1], "weight_decay": 0.0},
        ]

    assert "exactly one" in verify("09.param_groups", twice).message

    def by_ndim(m, wd):
        return [
            {"params": [p for p in m.parameters() if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in m.parameters() if p.ndim <= 1], "weight_decay": 0.0},
        ]

    assert verify("09.param_groups", by_ndim).passed  # an equivalent rule for these models


def test_recalibrate_bn_mistakes():
    def train_mode(model, x, batch_size=256):
        A8.recalibrate_bn(model, x, batch_size)
        return model.train()

    assert "eval mode" in verify("09.recalibrate_bn", train_mode).message

    def one_pass(model, x, batch_size=256):
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = 1.0
        with torch.no_grad():
            model.train()(x)
        for m, mom in zip(bns, saved):
            m.momentum = mom
        return model.eval()

    assert "batches of batch_size" in verify("09.recalibrate_bn", one_pass).message

    def keeps_none(model, x, batch_size=256):
        A8.recalibrate_bn(model, x, batch_size)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        return model

    assert "momentum" in verify("09.recalibrate_bn", keeps_none).message
    assert get_exercise("09.recalibrate_bn").forbidden == ("update_bn",)


@pytest.mark.slow
def test_capstone_reference_passes_and_broken_run_fails_every_part(monkeypatch):
    calls = []
    real = capstone.train_and_describe

    def counting(fn, data, seed):
        calls.append((fn, seed))
        return real(fn, data, seed)

    monkeypatch.setattr(capstone, "train_and_describe", counting)
    L8._REPORTS.clear()
    parts = ("accuracy", "eval_mode", "inputs_scaled", "batch_stats")
    for part in parts:
        ex = get_exercise(f"09.capstone_{part}")
        assert ex.name == "train_fixed"
        for case in ex.cases(np.random.default_rng(7), True):
            got = ex.run(A8.train_fixed, case)
            assert got["refused"] == "" and got["model"]["layers"][0]["type"] == "Standardize"
            assert ex.judge(got, case) is None
    assert len(calls) == 1  # one training shared by the four parts
    for part in parts:
        v = verify(f"09.capstone_{part}", capstone.train_broken)
        assert not v.passed and v.message
    messages = " ".join(verify(f"09.capstone_{p}", capstone.train_broken).message for p in parts)
    assert "eval()" in messages and "standardize" in messages and "2 values per channel" in messages
    assert sum(get_exercise(f"09.capstone_{p}").points for p in parts) == 8
