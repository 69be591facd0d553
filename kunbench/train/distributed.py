"""torch.distributed from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).

gloo on CPU, nccl on CUDA. Helpers reduce float64 sums exactly (every rank ends with the same
numbers) and gather variable-length arrays, so distributed evaluation equals a single pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from kunbench.errors import KunbenchError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors live: nccl needs CUDA tensors, gloo CPU ones."""
        if self.enabled and dist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    # ---- collectives (no-ops on one process) ---------------------------------------------
    def all_reduce_sum(self, values: list[float] | np.ndarray) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if not self.enabled:
            return arr
        t = torch.from_numpy(arr.copy()).to(self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def all_reduce_min(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return float(t.item())

    def all_reduce_max(self, value: float) -> float:
        return -self.all_reduce_min(-value)

    def all_gather_arrays(self, arr: np.ndarray) -> list[np.ndarray]:
        """Gather a 1-D float64 array of any length from each rank, in rank order."""
        arr = np.ascontiguousarray(arr, dtype=np.float64)
        if not self.enabled:
            return [arr]
        n = torch.tensor([arr.size], dtype=torch.int64, device=self.comm_device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        sizes_i = [int(s.item()) for s in sizes]
        cap = max(sizes_i)
        buf = torch.zeros(cap, dtype=torch.float64, device=self.comm_device)
        buf[: arr.size] = torch.from_numpy(arr).to(self.comm_device)
        out = [torch.zeros_like(buf) for _ in range(self.world_size)]
        dist.all_gather(out, buf)
        return [o[:s].cpu().numpy() for o, s in zip(out, sizes_i)]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto'; a one-line error when CUDA is asked for and absent."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise KunbenchError(f"--device {name}: CUDA is not available on this machine "
                                f"(torch {torch.__version__}); use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise KunbenchError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise KunbenchError(f"unknown device {name!r} (choose cpu, cuda or auto)")


def env_world() -> tuple[int, int, int]:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise KunbenchError(f"bad torch.distributed environment variable: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise KunbenchError(f"bad torch.distributed environment: RANK={rank} WORLD_SIZE={world}")
    return world, rank, local


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the process group torchrun describes (a single-process context when WORLD_SIZE<=1).

    On CUDA each process takes GPU LOCAL_RANK and uses nccl; on CPU gloo."""
    world, rank, local = env_world()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if world == 1 and not dist.is_initialized():
        return DistContext(0, 1, 0, dev, False)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise KunbenchError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun")
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                rank=rank, world_size=world)
        here = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dev, here)
