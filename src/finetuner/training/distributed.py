"""Data-parallel fine-tuning with torch.distributed, launched by torchrun.

``nproc_per_node: 1`` (the default) is one ordinary process: nothing here does anything.
With ``nproc_per_node: N > 1`` the finetune stage re-executes itself under
``python -m torch.distributed.run --standalone --nproc-per-node N`` (torchrun), and each of the
N processes calls :func:`setup`, which joins the process group torchrun describes in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...): NCCL on CUDA (process *i* uses
``cuda:LOCAL_RANK``), Gloo on CPU.  The training loop then

* gives each rank a contiguous slice of every global batch (the global order of an epoch is the
  same on every rank; :func:`shard`), so ``train.batch_size`` stays the global batch size;
* wraps the trainable part in :class:`~torch.nn.parallel.DistributedDataParallel` through
  :class:`TrainablePart` (DDP hooks ``forward()``; the loop's forward is
  ``forward_trainable(x, depth)``), rebuilt whenever the frozen depth changes;
* scales each rank's summed loss by the *global* denominator, so the averaged gradient is
  exactly the single-process gradient of the same global batch;
* splits the frozen-prefix cache computation over the ranks and all-gathers it;
* evaluates each rank's slice of the validation split and sums the counts over ranks.

BatchNorm layers that train: on CUDA they become :class:`torch.nn.SyncBatchNorm` (batch
statistics over the global batch).  On CPU PyTorch's SyncBatchNorm refuses to run (it needs a
GPU-like device), so each rank normalises with its own slice's statistics (what DDP does by
default), and after every epoch the running statistics are averaged over the ranks before
validation, so every rank holds the same model.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..params import ParamsError
from ..runtime import available_cores, resolve_device


def under_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets its variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N SCRIPT ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), *argv]


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by torchrun running ``argv`` (script and arguments) ``nproc`` times.

    ``os.execve``: torchrun takes this process's id, so DVC (or a shell) waits on it, its exit
    status is the stage's, and Ctrl-C / SIGTERM reach it directly (it stops its workers).
    ``OMP_NUM_THREADS`` is set to each process's share of the cores unless already set (torchrun
    would otherwise set 1 and warn).
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // nproc)))
    command = torchrun_command(nproc, argv)
    print(f"finetune: nproc_per_node={nproc}: {' '.join(command[1:])}", flush=True)
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank, world size and device (world size 1: no process group)."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0



def setup(device_name: str) -> Dist:
    """Resolve the device and, under torchrun with several processes, join the process group."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return Dist(resolve_device(device_name))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise ParamsError(f"params.yaml: 'device' is {device_name!r}, but with several "
                              "processes each takes cuda:LOCAL_RANK; use device: cuda (or auto) "
                              "and choose GPUs with CUDA_VISIBLE_DEVICES")
        if torch.cuda.device_count() < local_world:
            raise ParamsError(f"nproc_per_node is {local_world} but only "
                              f"{torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ParamsError(f"nproc_per_node > 1 runs on CUDA (NCCL) or CPU (Gloo), not on "
                          f"{device.type}; set nproc_per_node: 1")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(device, rank, world, local_rank, local_world)


def cleanup(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def chunk(n: int, ctx: Dist) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` that this rank owns (equal chunks, the last may be short)."""
    per = math.ceil(n / ctx.world_size)
    return min(n, ctx.rank * per), min(n, (ctx.rank + 1) * per)


def shard(index: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    if not ctx.enabled:
        return index
    return torch.tensor_split(index, ctx.world_size)[ctx.rank]


def all_reduce_sum(values: list[float], ctx: Dist) -> list[float]:
    """Sum a few numbers over the ranks (float64)."""
    if not ctx.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_rows(local: torch.Tensor, n: int, ctx: Dist) -> torch.Tensor:
    """Concatenate each rank's :func:`chunk` of ``n`` rows (``local``) on every rank."""
    if not ctx.enabled:
        return local
    per = math.ceil(n / ctx.world_size)
    dtype = local.dtype
    if dist.get_backend() == "gloo" and dtype == torch.bfloat16:  # not every Gloo build has bf16
        local = local.float()
    padded = local.new_zeros((per,) + tuple(local.shape[1:]))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat(parts)[:n].to(dtype)


def average_buffers(module: nn.Module, ctx: Dist) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, in place.

    Running means are a linear recursion in the batch means, so the average of the ranks' running
    means is exactly the running mean over the global batches (equal slices); running variances
    are close (the average of per-slice variances).  Identical buffers stay identical.
    """
    if not ctx.enabled:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(ctx.world_size)


def _comm_device(ctx: Dist) -> torch.device:
    return ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")


class TrainablePart(nn.Module):
    """``forward(x) = model.forward_trainable(x, depth)``: the call DDP must see to hook it."""

    def __init__(self, model: nn.Module, depth: int):
        super().__init__()
        self.model = model
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_trainable(x, self.depth)


def wrap(model: nn.Module, depth: int, ctx: Dist) -> nn.Module:
    """The module the training step calls: DDP around :class:`TrainablePart`, or it alone.

    DDP registers the parameters that require grad at construction, so a new wrapper is built
    whenever the frozen depth changes (its constructor also broadcasts rank 0's weights and
    buffers).  No buffer broadcast before every forward: running statistics are averaged once per
    epoch instead (:func:`average_buffers`).
    """
    part = TrainablePart(model, depth)
    if not ctx.enabled:
        return part
    import inspect
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_forward_sync = ({"forward_sync_buffers": False}  # newer torch; buffers still sync at init
                       if newer else {"broadcast_buffers": False})
    return DistributedDataParallel(part, device_ids=device_ids, **no_forward_sync)


def sync_batchnorm(model: nn.Module, ctx: Dist) -> nn.Module:
    """BatchNorm -> SyncBatchNorm where PyTorch supports it (several CUDA processes)."""
    if ctx.enabled and ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
