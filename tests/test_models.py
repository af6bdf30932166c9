import pytest
import torch
from torch import nn

from course_utils import make_cnn, make_mlp
from course_utils.models import NORMS, make_norm


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group", "rms"])
@pytest.mark.parametrize("placement", ["before", "after"])
def test_mlp_shapes_and_order(norm, placement):
    m = make_mlp(depth=3, width=16, norm=norm, placement=placement, activation="tanh")
    assert m(torch.randn(5, 784)).shape == (5, 10)
    names = [n for n, _ in m.blocks[0].named_children()]
    assert names == (
        ["linear", "norm", "act"] if placement == "before" else ["linear", "act", "norm"]
    )


@pytest.mark.parametrize("norm", NORMS)
def test_cnn_shapes(norm):
    m = make_cnn(channels=(4, 8), norm=norm)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_norm_kinds():
    assert isinstance(make_norm("batch", 8, "mlp"), nn.BatchNorm1d)
    assert isinstance(make_norm("batch", 8, "cnn"), nn.BatchNorm2d)
    assert isinstance(make_norm("layer", 8, "mlp"), nn.LayerNorm)
    ln_cnn = make_norm("layer", 8, "cnn")
    assert isinstance(ln_cnn, nn.GroupNorm) and ln_cnn.num_groups == 1
    assert make_norm("group", 12, "mlp", num_groups=8).num_groups == 4  # gcd keeps it valid
    with pytest.raises(ValueError, match="instance norm needs spatial"):
        make_norm("instance", 8, "mlp")
    with pytest.raises(ValueError, match="norm must be one of"):
        make_norm("weight", 8)


def test_bias_dropped_only_before_batch_norm():
    assert make_mlp(norm="batch").blocks[0].linear.bias is None
    assert make_mlp(norm="batch", placement="after").blocks[0].linear.bias is not None
    assert make_mlp(norm="layer").blocks[0].linear.bias is not None


def test_seeded_and_init_scale():
    a, b = make_mlp(seed=3), make_mlp(seed=3)
    assert torch.equal(a.blocks[0].linear.weight, b.blocks[0].linear.weight)
    small = float(make_mlp(init_scale=0.1).blocks[1].linear.weight.detach().std())
    big = float(make_mlp(init_scale=3.0).blocks[1].linear.weight.detach().std())
    assert big / small == pytest.approx(30, rel=0.1)
    assert float(make_mlp(init_std=0.05).blocks[0].linear.weight.detach().std()) == pytest.approx(
        0.05, rel=0.05
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="placement"):
        make_mlp(placement="middle")
    with pytest.raises(ValueError, match="activation"):
        make_mlp(activation="swish")
    with pytest.raises(ValueError, match="depth"):
        make_mlp(depth=0)
