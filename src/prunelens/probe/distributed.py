"""Ranks for a sharded probe: torchrun / ``accelerate launch`` (gloo), or a single process."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place among the workers (rank 0 creates and finalises the store)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def shard(self, items: Sequence[T]) -> list[T]:
        """Round-robin share of ``items`` for this rank (balances early and late layers)."""
        return list(items[self.rank :: self.world])

    def shard_by(self, items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
        """Round-robin share of the groups of ``items`` with equal ``key`` (in order of first appearance):
        a group's items stay on one rank (the units of one layer share its dense readout)."""
        groups = list(dict.fromkeys(key(x) for x in items))
        keep = set(groups[self.rank :: self.world])
        return [x for x in items if key(x) in keep]

    def broadcast_ok(self, ok: bool) -> bool:
        """True only if every rank says ``ok`` (so a failing rank 0 does not leave others waiting)."""
        if self.world == 1:
            return ok
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if ok else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable; tensors on the CPU), in rank order."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised_here = False


def init_ranks() -> Ranks:
    """Join the process group announced by the launcher's environment (WORLD_SIZE > 1), else one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        here = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    import torch

    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)  # the rank's GPU is the current device (a library's default allocations)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank, here)
