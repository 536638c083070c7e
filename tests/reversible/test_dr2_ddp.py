"""Dr2Stack under DistributedDataParallel (2 CPU processes, gloo): gradients equal averaged autograd ones.

Reversible mode accumulates parameter gradients with a nested backward per block; DDP's per-parameter
hooks must fire exactly once per step and the all-reduced result must equal the plain network's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pointdr2.engine.distributed import cleanup
from pointdr2.reversible import Dr2Stack, ResidualBlock


def _net(mode: str) -> nn.Module:
    torch.manual_seed(0)  # identical weights in every process and for both copies

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 6)
            fns = [nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 6)) for _ in range(5)]
            self.stack = Dr2Stack([ResidualBlock(f) for f in fns], alpha=0.5, beta=0.7, mode=mode)
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            return self.head(self.stack(self.inp(x))).sum()

    return Net().double()


def _worker(rank: int, world: int, store: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    worst = {}
    for mode in ("reversible", "auto"):
        model, ref = _net(mode), _net("standard")
        ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1e-4)  # many buckets: hooks matter
        gen = torch.Generator().manual_seed(100 + rank)  # each process sees different data
        worst[mode] = 0.0
        for _ in range(2):
            x = torch.randn(3, 4, 6, dtype=torch.float64, generator=gen)
            ddp.zero_grad()
            ddp(x).backward()
            ref.zero_grad()
            ref(x).backward()
            for p, q in zip(model.parameters(), ref.parameters()):
                avg = q.grad.clone()
                dist.all_reduce(avg)
                avg /= world
                worst[mode] = max(worst[mode], float((p.grad - avg).norm() / avg.norm()))
        del ddp, model, ref  # the Reducer goes while the group lives (see engine.distributed.cleanup)
    cleanup(synchronize=True)  # gc, barrier, destroy: a rank that tears down first can abort its peer
    if rank == 0:
        queue.put(worst)


def test_ddp_gradients_match_averaged_standard_gradients(tmp_path):
    queue = mp.get_context("spawn").Queue()
    mp.start_processes(_worker, args=(2, str(tmp_path / "store"), queue), nprocs=2, join=True, start_method="spawn")
    worst = queue.get(timeout=10)
    assert worst["reversible"] < 1e-12 and worst["auto"] < 1e-12, worst
