"""Lesson 06 (instance and group norm): the cube picture, contrast invariance, and Wu & He's
batch-size experiment at small scale.

- :func:`draw_cubes`: Wu & He's (2018) Fig. 2, the (N, C, H*W) cube with the entries that share
  one mean and variance highlighted, for batch, layer, instance and group norm.
- :func:`contrast_experiment`: CNNs with batch norm or instance norm trained on clean digits and
  tested on digits with changed contrast and brightness.
- :class:`CNNEnsemble`: K small CNNs (``conv -> norm -> ReLU -> pool`` blocks, then a linear
  head) trained as one computation: the first convolution is shared by all members' output
  channels, the later ones are grouped convolutions (one group per member). Each member has its
  own normalization (``"batch"``, ``"group"`` with its own G, ``"layer"``, ``"instance"``),
  learning rate and seed. :func:`ensemble_matches_torch` checks it against ``torch.nn``.
- :func:`cnn_batch_size_sweep`: BN vs GN as the batch size shrinks (same samples seen, learning
  rate tuned per arm, several seeds), with test accuracy from running statistics and from
  statistics re-estimated on training data after training ("precise BN").
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import seeds as seeding
from ..reference.stats import stat_groups
from .small_batch import mnist14, sample_order

__all__ = [
    "draw_cubes",
    "CNN_KINDS",
    "CNNEnsemble",
    "ensemble_matches_torch",
    "CNNSweep",
    "cnn_batch_size_sweep",
    "contrast_experiment",
    "contrast_images",
]

CNN_KINDS = ("batch", "group", "layer", "instance", "none")
_EPS = 1e-5


# --------------------------------------------------------------------------------------
# the cube figure
# --------------------------------------------------------------------------------------


def draw_cubes(fig=None, n: int = 6, c: int = 6, hw: int = 4, groups: int = 2):
    """Wu & He's Fig. 2: for each of batch, layer, instance and group norm, an (N, C, H*W) cube
    whose blue entries share one mean and variance (those of sample 0 and channel 0).
    Returns the figure."""
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(11, 3.2))
    titles = {
        "batch": "Batch norm",
        "layer": "Layer norm",
        "instance": "Instance norm",
        "group": f"Group norm (G = {groups})",
    }
    for i, kind in enumerate(("batch", "layer", "instance", "group")):
        ax = fig.add_subplot(1, 4, i + 1, projection="3d")
        ids = stat_groups(kind, (n, c, hw, 1), groups)[..., 0]  # (N, C, HW)
        chosen = ids == ids[0, 0, 0]
        filled = np.ones((n, c, hw), bool)
        colors = np.empty((n, c, hw), object)
        colors[...] = "#FFFFFF10"
        colors[chosen] = "#0072B2CC"
        # axes: x = N, y = C, z = H*W
        ax.voxels(filled, facecolors=colors, edgecolor="#55555540", linewidth=0.3)
        ax.set_xlabel("N", labelpad=-12)
        ax.set_ylabel("C", labelpad=-12)
        ax.set_zlabel("H, W", labelpad=-12)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_zticks([])
        ax.set_box_aspect((n, c, hw))
        ax.view_init(elev=22, azim=-58)
        ax.set_title(titles[kind], fontsize=10)
    return fig


# --------------------------------------------------------------------------------------
# contrast and brightness: instance norm vs batch norm
# --------------------------------------------------------------------------------------


def contrast_images(
    x: torch.Tensor, contrast: float, brightness: float, mean: float, std: float
) -> torch.Tensor:
    """Standardized images as if their pixels p (in [0, 1]) had been ``contrast * p +
    brightness`` before standardization with the training ``mean`` and ``std``."""
    return (contrast * (x * std + mean) + brightness - mean) / std


def contrast_experiment(
    kinds: Sequence[str] = ("batch", "instance"),
    settings: Sequence[tuple[float, float]] = (
        (1.0, 0.0),
        (0.3, 0.0),
        (3.0, 0.0),
        (1.0, 0.5),
        (0.5, 0.5),
    ),
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 0.05,
    seeds: Sequence[int] = (0,),
) -> dict[str, dict]:
    """Train a small CNN (14x14 MNIST, channels 8 and 16) with each normalization on clean
    images, then test it on images whose raw pixels became ``a * p + b`` for each (a, b).

    Returns ``{kind: {(a, b): test accuracy (mean over seeds)}}``.
    """
    from ..models import make_cnn
    from ..training import evaluate, train

    d = mnist14(images=True)
    split = d.torch_split()
    out = {}
    for kind in kinds:
        accs = {s: [] for s in settings}
        for seed in seeds:
            model = make_cnn(channels=(8, 16), norm=kind, image_size=14, seed=seed)
            train(model, split, steps=steps, lr=lr, momentum=0.9, batch_size=batch_size, seed=seed)
            for a, b in settings:
                xs = contrast_images(split.x_test, a, b, d.mean, d.std)
                accs[a, b].append(evaluate(model, xs, split.y_test)[1])
        out[kind] = {s: float(np.mean(v)) for s, v in accs.items()}
    return out


# --------------------------------------------------------------------------------------
# the CNN ensemble
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One network of a :class:`CNNEnsemble`: its normalization, groups (group norm), learning
    rate and seed."""

    kind: str
    lr: float
    seed: int
    groups: int = 1


class CNNEnsemble(nn.Module):
    """K small CNNs on (N, 1, S, S) images, trained together.

    Each member: for each entry of ``channels``, a 3x3 convolution (padding 1, no bias before
    batch norm), its normalization, ReLU and 2x2 max pooling; then a linear head. Members are
    initialized like ``torch.nn`` (``kaiming_uniform`` with a = sqrt(5)) from their own seed.
    Batch norm follows torch: biased variance to normalize, unbiased into the running variance
    (momentum 0.1), running statistics in eval mode.

    Input (N, 1, S, S), shared by all members; output logits (K, N, 10).
    """

    def __init__(
        self, members: Sequence[Member], channels: Sequence[int] = (8, 16), image_size: int = 14
    ):
        super().__init__()
        self.members = list(members)
        for m in self.members:
            if m.kind not in CNN_KINDS:
                raise ValueError(f"kind must be one of {CNN_KINDS}, got {m.kind!r}")
        k = len(self.members)
        self.k, self.channels = k, list(channels)
        self.convs = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.gammas = nn.ParameterList()
        self.betas = nn.ParameterList()
        c_in, size = 1, image_size
        for li, c in enumerate(channels):
            ws, bs = [], []
            for m in self.members:
                g = seeding.generator(1000 * m.seed + li)
                bound = 1.0 / math.sqrt(c_in * 9)
                ws.append((torch.rand(c, c_in, 3, 3, generator=g) * 2 - 1) * bound)
                bs.append((torch.rand(c, generator=g) * 2 - 1) * bound * (m.kind != "batch"))
            self.convs.append(nn.Parameter(torch.cat(ws)))  # (K*C, C_in, 3, 3)
            self.biases.append(nn.Parameter(torch.cat(bs)))
            self.gammas.append(nn.Parameter(torch.ones(k, c)))
            self.betas.append(nn.Parameter(torch.zeros(k, c)))
            self.register_buffer(f"running_mean{li}", torch.zeros(k, c))
            self.register_buffer(f"running_var{li}", torch.ones(k, c))
            c_in, size = c, size // 2
        self.features = c_in * size * size
        hw, hb = [], []
        for m in self.members:
            g = seeding.generator(1000 * m.seed + 99)
            bound = 1.0 / math.sqrt(self.features)
            hw.append((torch.rand(self.features, 10, generator=g) * 2 - 1) * bound)
            hb.append((torch.rand(1, 10, generator=g) * 2 - 1) * bound)
        self.head_w = nn.Parameter(torch.stack(hw))  # (K, F, 10)
        self.head_b = nn.Parameter(torch.stack(hb))  # (K, 1, 10)
        self.bias_mask = [
            torch.tensor(
                [m.kind != "batch" for m in self.members], dtype=torch.float32
            ).repeat_interleave(c)
            for c in channels
        ]
        # members with the same normalization (and G) are adjacent and normalized together
        self.blocks: list[tuple[str, int, slice]] = []
        for key in dict.fromkeys((m.kind, m.groups) for m in self.members):
            idx = [i for i, m in enumerate(self.members) if (m.kind, m.groups) == key]
            if idx != list(range(idx[0], idx[-1] + 1)):
                raise ValueError("members with the same normalization must be adjacent")
            self.blocks.append((key[0], key[1], slice(idx[0], idx[-1] + 1)))

    def _norm(self, z: torch.Tensor, li: int) -> torch.Tensor:
        n, _, h, w = z.shape
        c = self.channels[li]
        z = z.view(n, self.k, c, h, w)
        rm, rv = getattr(self, f"running_mean{li}"), getattr(self, f"running_var{li}")
        parts = []
        for kind, groups, sl in self.blocks:
            zs = z[:, sl]  # (N, k', C, H, W), a view
            if kind == "none":
                y = zs
            elif kind == "batch" and not self.training:
                y = (zs - rm[sl].view(1, -1, c, 1, 1)) * torch.rsqrt(
                    rv[sl].view(1, -1, c, 1, 1) + _EPS
                )
            elif kind == "batch":
                var, mean = torch.var_mean(zs, (0, 3, 4), unbiased=False)
                y = (zs - mean.view(1, -1, c, 1, 1)) * torch.rsqrt(var.view(1, -1, c, 1, 1) + _EPS)
                with torch.no_grad():
                    cnt = n * h * w
                    rm[sl].mul_(0.9).add_(0.1 * mean)
                    rv[sl].mul_(0.9).add_(0.1 * var * (cnt / max(cnt - 1, 1)))
            else:
                g = {"layer": 1, "instance": c, "group": groups}[kind]
                zg = zs.reshape(n, zs.shape[1], g, (c // g) * h * w)
                var, mean = torch.var_mean(zg, 3, unbiased=False, keepdim=True)
                y = ((zg - mean) * torch.rsqrt(var + _EPS)).view_as(zs)
            parts.append(y)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        y = out * self.gammas[li].view(1, self.k, c, 1, 1) + self.betas[li].view(1, self.k, c, 1, 1)
        return y.view(n, self.k * c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = x
        for li in range(len(self.channels)):
            groups = 1 if li == 0 else self.k
            h = F.conv2d(
                h, self.convs[li], self.biases[li] * self.bias_mask[li], padding=1, groups=groups
            )
            h = F.max_pool2d(F.relu(self._norm(h, li)), 2)
        h = h.view(n, self.k, -1).transpose(0, 1)  # (K, N, F)
        return torch.baddbmm(self.head_b, h, self.head_w)


def _train_cnn_ensemble(
    ens: CNNEnsemble, x: torch.Tensor, y: torch.Tensor, batch_size: int, samples: int, seed: int
) -> None:
    k = ens.k
    lr = torch.tensor([m.lr for m in ens.members])
    opt = torch.optim.SGD(ens.parameters(), lr=1.0, momentum=0.9)
    steps = samples // batch_size
    order = torch.from_numpy(sample_order(seed, len(x), steps * batch_size)).view(steps, batch_size)
    ens.train()
    for t in range(steps):
        idx = order[t]
        logits = ens(x[idx])  # (K, N, 10)
        loss = F.cross_entropy(logits.reshape(-1, 10), y[idx].repeat(k), reduction="none")
        per_member = loss.view(k, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        # SGD with momentum is linear in the gradient: scaling member k's loss by its learning
        # rate (and using lr=1) gives each member its own learning rate
        torch.nan_to_num(per_member * lr, nan=0.0, posinf=0.0).sum().backward()
        opt.step()


@torch.no_grad()
def _accuracy(ens: CNNEnsemble, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> np.ndarray:
    ens.eval()
    correct = torch.zeros(ens.k)
    for i in range(0, len(x), chunk):
        correct += (ens(x[i : i + chunk]).argmax(2) == y[i : i + chunk]).float().sum(1)
    out = (correct / len(x)).numpy()
    bad = ~np.array([all(torch.isfinite(p).all() for p in ens.parameters())] * ens.k)
    return np.where(bad, 0.0, out)


@torch.no_grad()
def _precise_stats(ens: CNNEnsemble, x: torch.Tensor, batch_size: int = 500) -> None:
    """Replace the running statistics by plain averages over batches of the training images."""
    sums = None
    ens.train()
    saved = [
        (getattr(ens, f"running_mean{i}").clone(), getattr(ens, f"running_var{i}").clone())
        for i in range(len(ens.channels))
    ]
    count = 0
    for i in range(0, len(x) - batch_size + 1, batch_size):
        for li in range(len(ens.channels)):
            getattr(ens, f"running_mean{li}").zero_()
            getattr(ens, f"running_var{li}").zero_()
        ens(x[i : i + batch_size])
        # with zeroed buffers, one update leaves 0.1 * the batch statistic in each buffer
        stats = [
            (getattr(ens, f"running_mean{li}") / 0.1, getattr(ens, f"running_var{li}") / 0.1)
            for li in range(len(ens.channels))
        ]
        sums = stats if sums is None else [(a + c, b + d) for (a, b), (c, d) in zip(sums, stats)]
        count += 1
    for li, (m, v) in enumerate(sums):
        batch_rows = [i for i, mem in enumerate(ens.members) if mem.kind == "batch"]
        rm, rv = getattr(ens, f"running_mean{li}"), getattr(ens, f"running_var{li}")
        rm.copy_(saved[li][0])
        rv.copy_(saved[li][1])
        rm[batch_rows] = (m / count)[batch_rows]
        rv[batch_rows] = (v / count)[batch_rows]


def ensemble_matches_torch(seed: int = 0) -> float:
    """Largest relative difference of the logits and of a weight gradient between a
    :class:`CNNEnsemble` and the same networks built from ``torch.nn`` layers (batch norm,
    group norm), in training mode."""
    members = [Member("batch", 0.1, seed), Member("group", 0.1, seed, groups=2)]
    ens = CNNEnsemble(members, channels=(4, 6), image_size=8)
    x = torch.randn(5, 1, 8, 8, generator=seeding.generator(seed))
    y = torch.randint(0, 10, (5,), generator=seeding.generator(seed + 1))
    logits = ens(x)
    F.cross_entropy(logits[0], y).backward(retain_graph=True)
    grad_bn = ens.convs[0].grad[:4].clone()
    ens.zero_grad()
    F.cross_entropy(logits[1], y).backward()
    grad_gn = ens.convs[0].grad[4:8].clone()
    worst = 0.0
    for j, (norm, grad) in enumerate(
        ((lambda c: nn.BatchNorm2d(c), grad_bn), (lambda c: nn.GroupNorm(2, c), grad_gn))
    ):
        with torch.no_grad():
            conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=j == 1)
            conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=j == 1)
            conv1.weight.copy_(ens.convs[0][4 * j : 4 * j + 4])
            conv2.weight.copy_(ens.convs[1][6 * j : 6 * j + 6])
            if j == 1:
                conv1.bias.copy_(ens.biases[0][4:8])
                conv2.bias.copy_(ens.biases[1][6:12])
            head = nn.Linear(ens.features, 10)
            head.weight.copy_(ens.head_w[j].T)
            head.bias.copy_(ens.head_b[j, 0])
        model = nn.Sequential(
            conv1,
            norm(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            conv2,
            norm(6),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            head,
        )
        out = model(x)
        F.cross_entropy(out, y).backward()
        with torch.no_grad():
            worst = max(
                worst,
                float((out - logits[j]).abs().max() / out.abs().max()),
                float((conv1.weight.grad - grad).abs().max() / grad.abs().max()),
            )
    return worst


@dataclass
class CNNSweep:
    """What :func:`cnn_batch_size_sweep` measured.

    ``test_acc[arm][b]``: test accuracy per seed at the arm's best learning rate (chosen on
    the validation images); for batch norm also ``precise_acc[b]``: the same networks
    evaluated with statistics re-estimated on 2,000 training images after training.
    ``arms``: names such as ``"batch"`` or ``"group4"``.
    """

    sizes: list[int]
    arms: list[str]
    seeds: list[int]
    test_acc: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    precise_acc: dict[int, np.ndarray] = field(default_factory=dict)
    best_lr: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def error(self, arm: str, size: int) -> float:
        """Mean test error (1 - accuracy) over seeds, in percent."""
        return float(100 * (1 - self.test_acc[arm][size].mean()))


def _arm_member(arm: str, lr: float, seed: int) -> Member:
    if arm.startswith("group"):
        return Member("group", lr, seed, groups=int(arm[5:]))
    return Member(arm, lr, seed)


def cnn_batch_size_sweep(
    sizes: Sequence[int] = (32, 8, 2),
    arms: Sequence[str] = ("batch", "group2"),
    seeds: Sequence[int] = (0, 1),
    samples: int = 2000,
    base_lrs: Sequence[float] | dict[str, Sequence[float]] = (0.03, 0.1, 0.3),
    channels: Sequence[int] = (4, 8),
    ref_batch: int = 32,
    precise_at: Sequence[int] = (),
) -> CNNSweep:
    """Wu & He's batch-size experiment at small scale: the same CNN with batch norm or group
    norm (``"groupG"``; also ``"layer"``, ``"instance"``), trained on the same ``samples``
    images at each batch size b with SGD (momentum 0.9) and a learning rate tuned per arm on the
    validation images from ``base_lrs * b / ref_batch`` (``base_lrs`` may be a dict giving each
    arm its own grid). All networks of one batch size train together (:class:`CNNEnsemble`)
    and see the same batches. For batch norm at the sizes in ``precise_at``, the networks are
    also evaluated after re-estimating their statistics on 2,000 training images.
    Returns a :class:`CNNSweep`."""
    t0 = time.perf_counter()
    d = mnist14(images=True)
    x_tr, y_tr = torch.tensor(d.x_train), torch.tensor(d.y_train)
    x_va, y_va = torch.tensor(d.x_val), torch.tensor(d.y_val)
    x_te, y_te = torch.tensor(d.x_test), torch.tensor(d.y_test)
    grids = base_lrs if isinstance(base_lrs, dict) else {arm: base_lrs for arm in arms}
    n_lr = len(grids[arms[0]])
    if any(len(grids[a]) != n_lr for a in arms):
        raise ValueError("every arm needs a learning-rate grid of the same length")
    res = CNNSweep(list(sizes), list(arms), list(seeds))
    for arm in arms:
        res.test_acc[arm], res.best_lr[arm] = {}, {}
    for b in sizes:
        lrs = {arm: [c * b / ref_batch for c in grids[arm]] for arm in arms}
        members = [_arm_member(arm, lr, s) for arm in arms for lr in lrs[arm] for s in seeds]
        ens = CNNEnsemble(members, channels=channels, image_size=x_tr.shape[-1])
        _train_cnn_ensemble(ens, x_tr, y_tr, b, samples, seed=0)
        shape = (len(arms), n_lr, len(seeds))
        val = _accuracy(ens, x_va, y_va).reshape(shape)
        test = _accuracy(ens, x_te, y_te).reshape(shape)
        best = {arm: int(val[j].mean(1).argmax()) for j, arm in enumerate(arms)}
        for j, arm in enumerate(arms):
            res.test_acc[arm][b] = test[j, best[arm]]
            res.best_lr[arm][b] = lrs[arm][best[arm]]
        if "batch" in arms and b in precise_at:
            _precise_stats(ens, x_tr[:2000])
            precise = _accuracy(ens, x_te, y_te).reshape(shape)
            j = list(arms).index("batch")
            res.precise_acc[b] = precise[j, best["batch"]]
    res.seconds = time.perf_counter() - t0
    return res
