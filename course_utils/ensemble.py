"""Many small networks trained at once: the one engine behind the course's sweeps.

A fair sweep trains dozens of tiny networks (every normalization x learning rate x seed).
Trained one after another, a tiny network's step is mostly fixed per-call cost; stacked
along a leading *member* axis, the same operations serve every member in one call.
:class:`Ensemble` does this with torch itself: it stacks ordinary modules (from
:func:`~course_utils.models.make_mlp`, :func:`~course_utils.models.make_cnn` or any other
factory) with ``torch.func.stack_module_state`` and runs them with ``torch.func.vmap`` over
``torch.func.functional_call``. Autograd gives each member's gradient, a ``torch.optim``
optimizer the update, :class:`MemberOptimizer` one learning rate per member. Every member
computes what its module computes alone (:func:`matches_members`; ``tests/test_ensemble.py``).

Example::

    >>> from course_utils.models import make_mlp
    >>> models = [make_mlp(depth=2, width=16, in_features=8, norm=n, seed=s)
    ...           for n in ("batch", "layer") for s in (0, 1)]
    >>> ens = Ensemble(models, input_dim=2)        # one member's input: (B, 8)
    >>> ens(torch.randn(32, 8)).shape              # the same batch for all 4 members
    torch.Size([4, 32, 10])
    >>> opt = MemberOptimizer(ens, lrs=[0.1, 0.1, 0.03, 0.03], momentum=0.9)
    >>> x, y = torch.randn(4, 32, 8), torch.randint(0, 10, (4, 32))   # a batch per member
    >>> losses = opt.step_on(x, y)                 # one SGD step of every member: (4,)
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = [
    "Ensemble",
    "MemberGroup",
    "MemberOptimizer",
    "member_cross_entropy",
    "train_members",
    "accuracy",
    "mean_loss",
    "flush_denormals",
    "matches_members",
]


def _architecture(model: nn.Module) -> tuple:
    """What members must share to be stacked: the module tree (its ``repr``: layer types,
    sizes, eps, dropout, ...) and the names, shapes and dtypes of its tensors."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (repr(model), tuple((n, tuple(t.shape), t.dtype) for n, t in tensors))


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    *path, attr = name.split(".")
    module = root.get_submodule(".".join(path))
    if parameter:
        module._parameters[attr] = nn.Parameter(value)
    else:
        module._buffers[attr] = value


class MemberGroup(nn.Module):
    """Members of one architecture as one module: ``net`` is a copy of the first member
    whose every parameter and buffer carries a leading member axis of size ``k``.

    ``net``'s submodules are real layers (``net.blocks[0].norm`` is a ``BatchNorm1d``
    whose ``running_mean`` is ``(k, C)``), so code that looks for layers by type (for
    example :func:`~course_utils.training.recalibrate_bn`) finds them; their ``momentum``,
    ``eps`` and train/eval mode are shared by the group's members.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(list(models))
        self.k = len(models)
        self.net = copy.deepcopy(models[0])
        linear_weights = {
            f"{prefix}.weight" if prefix else "weight"
            for prefix, m in self.net.named_modules()
            if isinstance(m, nn.Linear)
        }
        for name, value in params.items():
            if name in linear_weights:
                # stored as (k, in, out), seen as (k, out, in): the layout in which the
                # batched x @ W^T reads it and its gradient is produced (no transposing copy)
                value = value.transpose(1, 2).contiguous().transpose(1, 2)
            _set_tensor(self.net, name, value, parameter=True)
        for name, value in buffers.items():
            _set_tensor(self.net, name, value, parameter=False)

    def forward(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Outputs ``(k, B, ...)`` for inputs ``(k, B, ...)``, or ``(B, ...)`` shared."""
        state = dict(self.net.named_parameters())
        state.update(self.net.named_buffers())

        def one_member(member_state, member_x):
            return functional_call(self.net, member_state, (member_x,))

        # randomness="different": each member draws its own dropout masks
        run = vmap(one_member, in_dims=(0, None if shared else 0), randomness="different")
        return run(state, x)

    def member(self, i: int) -> nn.Module:
        """A standalone copy of member ``i`` (an ordinary module, detached)."""
        model = copy.deepcopy(self.net)
        with torch.no_grad():
            for name, t in [*self.net.named_parameters(), *self.net.named_buffers()]:
                value = t[i].clone(memory_format=torch.contiguous_format)
                _set_tensor(model, name, value, isinstance(t, nn.Parameter))
        return model


class Ensemble(nn.Module):
    """K networks trained as one; members of the same architecture are stacked.

    Args:
        models: the members, in order. Consecutive members of one architecture (same layer
            types, sizes and settings) form a :class:`MemberGroup`, run in one ``vmap``
            call; a sweep is fastest with members of a kind next to each other.
        input_dim: the number of dims of one member's input (2 for an MLP's ``(B, D)``,
            4 for a CNN's ``(B, C, H, W)``). A ``forward`` input with one more dim holds
            one batch per member, ``(K, B, ...)``; one with ``input_dim`` dims is shared by
            every member.

    ``forward(x)`` returns ``(K, B, ...)``: member ``k``'s output on its input. ``train()``
    and ``eval()`` switch every member. :meth:`member` gives member ``k`` back as an
    ordinary module.
    """

    def __init__(self, models: Sequence[nn.Module], input_dim: int):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.input_dim = int(input_dim)
        runs: list[list[nn.Module]] = []
        for model in models:
            if runs and _architecture(model) == _architecture(runs[-1][0]):
                runs[-1].append(model)
            else:
                runs.append([model])
        self.groups = nn.ModuleList(MemberGroup(run) for run in runs)
        self.k = len(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.input_dim:
            outs = [g(x, shared=True) for g in self.groups]
        elif x.dim() == self.input_dim + 1 and x.shape[0] == self.k:
            parts = x.split([g.k for g in self.groups])
            outs = [g(part, shared=False) for g, part in zip(self.groups, parts)]
        else:
            raise ValueError(
                f"expected one input of {self.input_dim} dims for all members or "
                f"({self.k}, ...) with {self.input_dim + 1} dims, got shape {tuple(x.shape)}"
            )
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as an ordinary module (a detached copy of its current state)."""
        if not 0 <= k < self.k:
            raise IndexError(f"member {k} of an ensemble of {self.k}")
        for g in self.groups:
            if k < g.k:
                return g.member(k)
            k -= g.k
        raise AssertionError("unreachable")

    @torch.no_grad()
    def diverged(self) -> torch.Tensor:
        """Members whose parameters are no longer all finite: bool ``(K,)``."""
        bad = []
        for g in self.groups:
            flags = torch.zeros(g.k, dtype=torch.bool)
            for p in g.parameters():
                flags |= ~torch.isfinite(p.reshape(g.k, -1)).all(1)
            bad.append(flags)
        return torch.cat(bad)


class MemberOptimizer:
    """A ``torch.optim`` optimizer over an ensemble's stacked parameters, with one learning
    rate per member.

    The optimizer runs with ``lr=1``; each member's change is then scaled by its own
    learning rate: ``p = p_before + lr_k * (p_after - p_before)``. That is exactly the
    optimizer run with ``lr_k`` for SGD (with momentum and weight decay), Adam and AdamW,
    whose updates are proportional to the learning rate.

    Args:
        ensemble: the :class:`Ensemble`.
        lrs: ``K`` learning rates, in member order.
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        kwargs: the optimizer's other arguments (``momentum``, ``betas``, ...).
    """

    _CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}

    def __init__(self, ensemble: Ensemble, lrs: Sequence[float], name: str = "sgd", **kwargs):
        if name not in self._CLASSES:
            raise ValueError(f"optimizer must be one of {tuple(self._CLASSES)}, got {name!r}")
        if len(lrs) != ensemble.k:
            raise ValueError(f"{len(lrs)} learning rates for {ensemble.k} members")
        self.ensemble = ensemble
        self.params: list[nn.Parameter] = []
        self.scales: list[torch.Tensor] = []
        lr = torch.as_tensor([float(v) for v in lrs], dtype=torch.float64)
        start = 0
        for g in ensemble.groups:
            for p in g.parameters():
                self.params.append(p)
                shape = (g.k,) + (1,) * (p.dim() - 1)
                self.scales.append(lr[start : start + g.k].to(p.dtype).view(shape))
            start += g.k
        # SGD's update is linear in the gradient: scaling each member's loss by its learning
        # rate gives it its own rate for free (no weight decay, which is not scaled by it)
        self.scale_loss = name == "sgd" and not kwargs.get("weight_decay", 0.0)
        self.lrs = lr
        self.optimizer = self._CLASSES[name](self.params, lr=1.0, foreach=True, **kwargs)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step, each member's change scaled by its learning rate (for SGD,
        the loss of each member already was: see :meth:`backward`)."""
        if self.scale_loss:
            self.optimizer.step()
            return
        before = torch._foreach_mul(self.params, 1.0)
        self.optimizer.step()
        torch._foreach_sub_(self.params, before)
        torch._foreach_mul_(self.params, self.scales)
        torch._foreach_add_(self.params, before)

    def backward(self, losses: torch.Tensor) -> None:
        """Gradients of the members' losses ``(K,)``, each member's own: a member whose
        loss is NaN or infinite gets none from it; the others are unaffected."""
        if self.scale_loss:
            losses = losses * self.lrs.to(losses.dtype)
        # members are independent: the sum's gradient w.r.t. each member's loss is 1
        torch.nan_to_num(losses, nan=0.0, posinf=0.0, neginf=0.0).sum().backward()

    def step_on(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Forward, backward and :meth:`step` on one batch; returns the per-member losses
        ``(K,)`` (detached). ``loss_fn(outputs, y) -> (K,)``, default
        :func:`member_cross_entropy`. A member whose loss is NaN or infinite gets no
        gradient from it; the others are unaffected."""
        return self._train_step(x, y, loss_fn)[0]

    def _train_step(self, x, y, loss_fn):
        outputs = self.ensemble(x)
        losses = (loss_fn or member_cross_entropy)(outputs, y)
        self.zero_grad()
        self.backward(losses)
        self.step()
        return losses.detach(), outputs.detach()


def member_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per member: logits ``(K, B, ..., C)``, labels ``(K, B, ...)`` or
    shared ``(B, ...)``; returns ``(K,)``."""
    k, classes = logits.shape[0], logits.shape[-1]
    target = y.expand(logits.shape[:-1]) if y.dim() < logits.dim() - 1 else y
    loss = F.cross_entropy(logits.reshape(-1, classes), target.reshape(-1), reduction="none")
    return loss.view(k, -1).mean(1)


@contextlib.contextmanager
def flush_denormals():
    """Treat denormal floats as zero inside the block (a CPU flag).

    Batch norm at batch size 2 passes (almost) no gradient, so momentum buffers decay
    towards 1e-38 and below, where arithmetic on denormal numbers is about 30x slower.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train_members(
    optimizer: MemberOptimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_accuracy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Train every member of ``optimizer.ensemble`` on ``batches`` (pairs ``x, y``, each
    per member or shared, see :class:`Ensemble`), in training mode, one step a batch.

    Returns ``(losses, accuracies)``: the per-member training loss of every step,
    ``(steps, K)``, and, with ``batch_accuracy``, the accuracy on each step's batch
    before the update, ``(steps, K)`` (else ``None``).
    """
    ens = optimizer.ensemble
    ens.train()
    losses, accs = [], []
    with flush_denormals():
        for x, y in batches:
            loss, outputs = optimizer._train_step(x, y, loss_fn)
            losses.append(loss)
            if batch_accuracy:
                accs.append(_correct(outputs, y).float().view(ens.k, -1).mean(1))
    loss_table = torch.stack(losses) if losses else torch.zeros(0, ens.k)
    return loss_table, (torch.stack(accs) if batch_accuracy and accs else None)


def _correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    target = y.expand(logits.shape[:-1]) if y.dim() < logits.dim() - 1 else y
    return logits.argmax(-1) == target


@torch.no_grad()
def accuracy(ens: Ensemble, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Eval-mode accuracy of every member on the same inputs ``x`` (N, ...): ``(K,)``;
    0 for a member whose weights are no longer finite. The ensemble's mode is restored."""
    was_training = ens.training
    ens.eval()
    try:
        correct = torch.zeros(ens.k)
        with flush_denormals():
            for i in range(0, len(x), chunk):
                correct += _correct(ens(x[i : i + chunk]), y[i : i + chunk]).float().sum(1)
    finally:
        ens.train(was_training)
    return torch.where(ens.diverged(), 0.0, correct / max(len(x), 1))


@torch.no_grad()
def mean_loss(ens: Ensemble, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Eval-mode mean cross-entropy of every member on the same inputs: ``(K,)``; inf for a
    member whose weights are no longer finite. The ensemble's mode is restored."""
    was_training = ens.training
    ens.eval()
    try:
        total = torch.zeros(ens.k, dtype=torch.float64)
        with flush_denormals():
            for i in range(0, len(x), chunk):
                part = member_cross_entropy(ens(x[i : i + chunk]), y[i : i + chunk])
                total += part.double() * len(y[i : i + chunk])
    finally:
        ens.train(was_training)
    return torch.where(ens.diverged(), torch.inf, total / max(len(x), 1))


def matches_members(
    make_models: Callable[[], Sequence[nn.Module]],
    input_dim: int,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    lrs: Sequence[float],
    name: str = "sgd",
    **kwargs,
) -> float:
    """How exactly the engine trains: the largest relative difference between the members'
    parameters after training them together on ``batches`` and after training each model
    alone on its own part of the same batches with ``torch.optim`` (its own learning
    rate). ``make_models()`` must build the same models (same seeds) each time."""
    ens = Ensemble(make_models(), input_dim)
    opt = MemberOptimizer(ens, lrs, name, **kwargs)
    train_members(opt, batches)
    worst = 0.0
    for k, model in enumerate(make_models()):
        alone = MemberOptimizer._CLASSES[name](model.parameters(), lr=lrs[k], **kwargs)
        model.train()
        for x, y in batches:
            xk = x if x.dim() == input_dim else x[k]
            yk = y if x.dim() == input_dim else y[k]
            loss = member_cross_entropy(model(xk).unsqueeze(0), yk.unsqueeze(0))[0]
            alone.zero_grad()
            loss.backward()
            alone.step()
        together = ens.member(k)
        for a, b in zip(model.state_dict().values(), together.state_dict().values()):
            if a.is_floating_point():
                scale = float(a.abs().max()) or 1.0
                worst = max(worst, float((a - b).abs().max()) / scale)
    return worst
