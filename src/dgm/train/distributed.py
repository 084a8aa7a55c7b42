"""Data-parallel training on several processes: ``torchrun --nproc_per_node N -m dgm train ...``.

PyTorch's own engine does the work: ``torchrun`` starts the processes and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (``--nnodes`` for several machines), ``torch.distributed`` connects
them (gloo on CPUs, NCCL on GPUs) and its collectives move the numbers. What dgm adds is the
semantics, chosen so that N processes train THE SAME RUN as one process would:

* ``train.batch_size`` is the global batch. Every process draws the same shuffled order and the
  same representation noise (generators seeded alike) and keeps its contiguous share of each
  global batch (:func:`shard`): a different shard each step and each epoch, the union of the shards
  being the single-process batch, as DistributedSampler's shards are for the whole epoch.
* The model's per-example training noise is drawn for the global batch and sharded the same way
  (:func:`dgm.models.base.noise_shard`), so process r sees the rows of the noise the single process
  would give its examples.
* After each backward pass the gradients of the phase's parameters are averaged across processes,
  one all-reduce of one flat buffer (:func:`average_gradients`); since each process's loss is the
  mean over its equal share, the average is the gradient of the global mean. Every process then
  takes the same optimiser step from the same state: the weights, the optimiser and the EMA stay
  identical everywhere, so rank 0's checkpoint is the run's (and a single-process checkpoint resumes
  under N processes and back: the steps, the order and the noise do not depend on N).

The protocol's ``loss(batch, phase, progress)`` is not a module's ``forward``, a model may train
several phases on disjoint parameters and some take gradients of gradients (WGAN-GP, R1): the
``DistributedDataParallel`` wrapper, whose reducer hooks one ``forward`` per step, fits none of those,
so the all-reduce is called directly (the same collective DDP's buckets issue, without the overlap
with the backward pass). Buffers (batch-norm running statistics, from each process's own share) are
broadcast from rank 0 at the end of every epoch. Logged sums are averaged across processes at each
log row (one all-reduce), together with the count of non-finite losses and the stop request
(Ctrl-C), so every process logs, stops and diverges at the same step. Only rank 0 writes: the
checkpoint, ``metrics.csv``, the sample grids, the report.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from dgm.data.core import Batch
from dgm.errors import DgmError

BACKENDS = ("auto", "gloo", "nccl")


class WorldError(DgmError):
    """A check that every process of the run fails alike (the settings, the batch, the backend):
    only rank 0 prints it."""

    every_process = True


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the process's index on its machine (which GPU it takes)

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0 only)."""
        return self.rank == 0


SINGLE = World()


def launched() -> World:
    """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
    one process when it does not."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise DgmError("RANK, WORLD_SIZE and LOCAL_RANK must be integers: start the processes with torchrun") from None
    if size < 1 or not 0 <= rank < size:
        raise DgmError(f"rank {rank} of a world of {size} processes: start the processes with torchrun")
    return World(rank, size, local)


def backend_for(device: torch.device, backend: str) -> str:
    """The collective backend: gloo for CPUs, NCCL for GPUs (``auto``); NCCL needs a GPU."""
    if backend not in BACKENDS:
        raise WorldError(f"unknown train.backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise WorldError("train.backend=nccl needs a CUDA GPU per process, and this run trains on "
                       f"{device.type}: use --set train.backend=gloo (or auto)")
    return backend


def connect(world: World, device: torch.device, backend: str) -> torch.device:
    """Join the process group of ``world`` (once per process); returns the device this process
    trains on (its own GPU, ``cuda:LOCAL_RANK``, when the run asks for ``cuda``)."""
    import torch.distributed as dist

    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    name = backend_for(device, backend)
    if not connected():
        dist.init_process_group(backend=name, rank=world.rank, world_size=world.size)
    return device


def connected() -> bool:
    """Whether this process has joined a process group (by :func:`connect` or the user's own
    ``torch.distributed.init_process_group``)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier(world: World) -> None:
    """Wait until every process is here."""
    if world.active:
        import torch.distributed as dist

        dist.barrier()


def disconnect() -> None:
    import torch.distributed as dist

    if connected():
        dist.destroy_process_group()


def check_same(world: World, what: str, text: str) -> None:
    """Refuse processes that were started differently: ``text`` (e.g. the run's resolved config)
    must be the same in every process."""
    if not world.active:
        return
    import torch.distributed as dist

    digests: list[str | None] = [None] * world.size
    dist.all_gather_object(digests, hashlib.sha256(text.encode()).hexdigest())
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise WorldError(f"the processes were started with different {what} (ranks {', '.join(map(str, odd))} differ "
                       "from rank 0): start every process with the same command")


def check_batch(world: World, batch_size: int, labelled_per_batch: int = 0) -> int:
    """The local batch: ``batch_size / world.size``, refused unless every process gets the same
    number of examples (and of labelled ones, for partially labelled data)."""
    if batch_size < world.size:
        raise WorldError(f"train.batch_size={batch_size} is smaller than the {world.size} processes: "
                       f"give each process at least one example (--set train.batch_size={world.size} or more)")
    if batch_size % world.size or labelled_per_batch % world.size:
        what = f"{batch_size} examples" + (f" and {labelled_per_batch} labelled ones" if labelled_per_batch else "")
        raise WorldError(f"a global batch of {what} does not split evenly across {world.size} processes: "
                       f"set train.batch_size to a multiple of {world.size}")
    return batch_size // world.size


def shard(batch: Batch, world: World, labelled_extra: int = 0) -> Batch:
    """This process's contiguous share of a global batch. With partially labelled data the batch
    ends with ``labelled_extra`` labelled examples; each process takes its share of both parts."""
    if not world.active:
        return batch
    n = len(batch.x) - labelled_extra
    parts = [(n // world.size * world.rank, n // world.size)]
    if labelled_extra:
        parts.append((n + labelled_extra // world.size * world.rank, labelled_extra // world.size))

    def take(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return torch.cat([t[lo:lo + count] for lo, count in parts]) if len(parts) > 1 else t[parts[0][0]:sum(parts[0])]

    return replace(batch, **{name: take(getattr(batch, name)) for name in
                             ("x", "y", "labelled", "mask", "factors", "captions")})


def average_gradients(parameters: list[torch.nn.Parameter], world: World) -> None:
    """Replace each gradient by its mean across the processes: one all-reduce of one flat buffer.
    Every process must call this with the same parameters (a parameter without a gradient in one
    process gets zeros there, so the buffers line up)."""
    if not world.active:
        return
    import torch.distributed as dist

    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = g.copy_(flat[offset:offset + n].view(g.shape))  # in place: g keeps its layout (channels_last)
        offset += n


def average(values: Tensor, world: World) -> Tensor:
    """The mean of ``values`` (any shape, float) across the processes."""
    if not world.active:
        return values
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out)
    return out / world.size


def gather(value: Any, world: World) -> list[Any]:
    """Every process's ``value`` (anything picklable: CPU tensors, lists of them), in rank order, in
    every process."""
    if not world.active:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def broadcast_state(module: torch.nn.Module, world: World, *, buffers_only: bool = False) -> None:
    """Give every process rank 0's parameters and buffers (or its buffers only)."""
    if not world.active:
        return
    import torch.distributed as dist

    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


__all__ = ["BACKENDS", "SINGLE", "World", "WorldError", "average", "average_gradients", "backend_for", "barrier", "broadcast_state",
           "check_batch", "check_same", "connect", "connected", "disconnect", "gather", "launched", "shard"]
