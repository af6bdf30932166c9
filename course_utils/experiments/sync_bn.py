"""Batch norm synchronised across processes, on CPU: the module, the conversion, and the
lesson 10 experiment run over real gloo processes (or threads where gloo cannot run).

torch 2.13's ``nn.SyncBatchNorm`` refuses CPU tensors, so :class:`SyncBN` calls the course's
autograd Function (``course_utils.answers.lesson10.SyncBatchNormFunction``) with an
``all_reduce`` callable: ``torch.distributed.all_reduce`` in processes, a thread barrier in
:class:`~course_utils.experiments.distributed.ThreadGroup`.

Data parallelism here is written out by hand (each rank computes the gradient of its slice's
loss, then the gradients are all-reduced and divided by the world size), which is what
``DistributedDataParallel`` does in buckets overlapped with the backward pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .. import seeds as seeding
from ..data import batches, load_mnist
from ..models import make_mlp
from ..training import evaluate
from . import distributed

__all__ = [
    "SyncBN",
    "convert_sync_bn",
    "average_gradients",
    "train_rank",
    "experiment_worker",
    "train_single",
    "DistributedResult",
    "run_experiment",
]

AllReduce = Callable[[torch.Tensor], None]
# make_mlp seeds torch's global generator: ranks that are threads of one process must not
# draw their initial weights at the same time
_INIT_LOCK = threading.Lock()


def _model(depth: int, width: int, seed: int) -> nn.Module:
    with _INIT_LOCK:
        return make_mlp(depth=depth, width=width, norm="batch", seed=seed)


def _function():
    from ..answers.lesson10 import SyncBatchNormFunction

    return SyncBatchNormFunction


class SyncBN(nn.Module):
    """A batch-norm layer whose training-mode statistics pool every rank's batch.

    Shares the parameters and buffers of the batch-norm module ``bn`` it replaces
    (like ``nn.SyncBatchNorm.convert_sync_batchnorm``). Input (N_local, C, *). Evaluation
    mode uses the running statistics and does not communicate.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, all_reduce: AllReduce) -> None:
        super().__init__()
        if not bn.affine or not bn.track_running_stats:
            raise ValueError("SyncBN needs an affine batch norm with running statistics")
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.eps, self.momentum = bn.eps, bn.momentum if bn.momentum is not None else 0.1
        self.all_reduce = all_reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        self.num_batches_tracked.add_(1)
        return _function().apply(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.eps,
            self.momentum,
            self.all_reduce,
        )


def convert_sync_bn(module: nn.Module, all_reduce: AllReduce) -> nn.Module:
    """Replace every batch-norm layer in ``module`` by a :class:`SyncBN` (in place, as
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` does); returns ``module``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return SyncBN(module, all_reduce)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_bn(child, all_reduce))
    return module


def average_gradients(model: nn.Module, all_reduce: AllReduce, world_size: int) -> None:
    """Data parallelism's one communication: every gradient summed over ranks, divided by
    the world size (one flat tensor, one call)."""
    params = [p for p in model.parameters() if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def _statistics(rank: int, world_size: int, all_reduce: AllReduce, seed: int, per: int) -> dict:
    """One forward and backward of the first batch-norm layer on this rank's slice."""
    data = load_mnist()
    model = _model(1, 16, seed)
    gen = seeding.generator(seed)
    idx = torch.randperm(len(data.x_train), generator=gen)[: world_size * per]
    upstream = torch.randn(world_size * per, 16, generator=gen)
    mine = slice(rank * per, (rank + 1) * per)
    with torch.no_grad():
        h = model.blocks[0].linear(data.x_train[idx[mine]])
    bn = model.blocks[0].norm
    sync = SyncBN(bn, all_reduce)
    x = h.clone().requires_grad_(True)
    y = sync(x)
    y.backward(upstream[mine])
    return {
        "h": h,
        "local mean": h.mean(0),
        "local var": h.var(0, unbiased=False),
        "output": y.detach(),
        "grad of x": x.grad,
        "grad of weight": bn.weight.grad.clone(),
        "grad of bias": bn.bias.grad.clone(),
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
        "upstream": upstream[mine],
    }


def train_rank(
    rank: int,
    world_size: int,
    all_reduce: AllReduce,
    sync: bool,
    lr: float,
    seed: int,
    steps: int = 250,
    per_process: int = 2,
    depth: int = 2,
    width: int = 128,
) -> dict:
    """One rank of data-parallel training: its slice of every global batch, per-process or
    synchronised batch norm, gradients averaged over the ranks after each backward pass.

    Returns this rank's losses, test accuracy (its own running statistics), seconds per step
    and the all_reduce calls and bytes per step, by tag ("batch norm", "gradients").
    """
    data = load_mnist()
    model = _model(depth, width, seed)  # the same initial weights on every rank
    comm = distributed.CommCounter(all_reduce)
    if sync:
        convert_sync_bn(model, comm.tagged("batch norm"))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stream = batches(data.x_train, data.y_train, world_size * per_process, seed=seed)
    mine = slice(rank * per_process, (rank + 1) * per_process)
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        xb, yb = next(stream)  # every rank draws the same global batch and keeps its slice
        loss = F.cross_entropy(model(xb[mine]), yb[mine])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(model, comm.tagged("gradients"), world_size)
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    _, acc = evaluate(model, data.x_test, data.y_test)
    return {
        "losses": losses,
        "test_acc": acc,
        "seconds_per_step": seconds / steps,
        "calls_per_step": {k: v / steps for k, v in comm.calls.items()},
        "bytes_per_step": {k: v / steps for k, v in comm.bytes.items()},
    }


def _torch_sync_bn_on_cpu() -> str:
    """What torch's own nn.SyncBatchNorm does with a CPU tensor in an initialised group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return "not tried (no process group: threads stand in for processes)"
    try:
        nn.SyncBatchNorm(3)(torch.randn(4, 3))
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return "ran on CPU"


def experiment_worker(rank: int, world_size: int, all_reduce: AllReduce, config: dict) -> dict:
    """What every rank runs: the statistics of one batch, then each training arm.

    ``config``: seed, per_process, steps, lrs, depth, width (see :func:`run_experiment`).
    """
    torch.set_num_threads(1)
    seed, per = config["seed"], config["per_process"]
    out = {
        "statistics": _statistics(rank, world_size, all_reduce, seed, per),
        "torch SyncBatchNorm on CPU": _torch_sync_bn_on_cpu(),
        "arms": {},
    }
    for sync in (False, True):
        for lr in config["lrs"]:
            out["arms"][sync, lr] = train_rank(
                rank,
                world_size,
                all_reduce,
                sync,
                lr,
                seed,
                config["steps"],
                per,
                config["depth"],
                config["width"],
            )
    return out


def train_single(
    lr: float, seed: int, steps: int, batch_size: int, depth: int = 2, width: int = 128
) -> dict:
    """The same training as a synchronised arm, in one process on the whole batch
    (``world_size * per_process`` samples, plain ``nn.BatchNorm1d``)."""
    data = load_mnist()
    model = make_mlp(depth=depth, width=width, norm="batch", seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stream = batches(data.x_train, data.y_train, batch_size, seed=seed)
    losses = []
    for _ in range(steps):
        xb, yb = next(stream)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _, acc = evaluate(model, data.x_test, data.y_test)
    return {"losses": losses, "test_acc": acc}


@dataclass
class DistributedResult:
    """What :func:`run_experiment` measured.

    Attributes:
        transport: how the ranks ran ("2 processes, torch.distributed gloo on 127.0.0.1", or
            threads and the reason processes could not be used).
        statistics: per rank, the first batch-norm layer's inputs, local statistics, output,
            gradients and running statistics after one synchronised step.
        arms: ``(synchronised, lr)`` -> per rank: losses, test_acc, seconds_per_step,
            calls_per_step and bytes_per_step (per tag: "batch norm", "gradients").
        seconds: wall time of the whole run, start-up included.
        torch_sync_bn: what ``nn.SyncBatchNorm`` did with a CPU tensor on rank 0.
    """

    transport: str
    config: dict
    statistics: list[dict] = field(default_factory=list)
    arms: dict = field(default_factory=dict)
    seconds: float = 0.0
    torch_sync_bn: str = ""

    def loss(self, sync: bool, lr: float) -> list[float]:
        """The global training loss per step: the mean of the ranks' slice losses."""
        per_rank = self.arms[sync, lr]
        return [sum(v) / len(v) for v in zip(*(r["losses"] for r in per_rank))]

    def accuracy(self, sync: bool, lr: float) -> float:
        """Rank 0's test accuracy (evaluated with rank 0's running statistics)."""
        return float(self.arms[sync, lr][0]["test_acc"])

    def best_lr(self, sync: bool) -> float:
        return max(self.config["lrs"], key=lambda lr: self.accuracy(sync, lr))


def run_experiment(
    seed: int = 0,
    world_size: int = 2,
    per_process: int = 2,
    steps: int = 250,
    lrs: Sequence[float] = (0.01, 0.03, 0.1),
    depth: int = 2,
    width: int = 128,
    processes: bool = True,
    timeout: float = 120.0,
) -> DistributedResult:
    """Run :func:`experiment_worker` on ``world_size`` ranks and collect the results.

    Args:
        seed: seeds the weights, the batches and the statistics example.
        per_process: samples per rank and step (the global batch is world_size times it).
        steps, lrs: each arm (per-process batch norm, synchronised batch norm) trains for
            ``steps`` SGD steps at every learning rate in ``lrs``.
        processes: True runs real processes (torch.distributed, gloo, loopback); when they
            cannot run, or False, threads of this process stand in (same code, same sums).
        timeout: seconds before the processes are stopped.
    """
    config = dict(
        seed=seed, per_process=per_process, steps=steps, lrs=tuple(lrs), depth=depth, width=width
    )
    start = time.perf_counter()
    transport = None
    results = None
    if processes:
        try:
            results = distributed.run_processes(
                experiment_worker, world_size, args=(config,), timeout=timeout
            )
            transport = f"{world_size} processes, torch.distributed gloo on 127.0.0.1"
        except (distributed.DistributedUnavailable, RuntimeError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            transport = f"{world_size} threads of this process (processes could not run: {reason})"
    if results is None:
        results = distributed.run_threads(experiment_worker, world_size, args=(config,))
        transport = transport or f"{world_size} threads of this process (processes=False)"
    keys = results[0]["arms"].keys()
    return DistributedResult(
        transport=transport,
        config=config,
        statistics=[r["statistics"] for r in results],
        arms={k: [r["arms"][k] for r in results] for k in keys},
        seconds=time.perf_counter() - start,
        torch_sync_bn=results[0]["torch SyncBatchNorm on CPU"],
    )
