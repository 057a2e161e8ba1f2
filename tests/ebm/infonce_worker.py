"""Run by torchrun (2 processes, gloo) from test_infonce.py: each process takes its half of a
fixed batch through the DDP-wrapped InfoNCE module and rank 0 saves the loss and gradients."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path[:0] = [sys.argv[2], str(Path(sys.argv[2]).parent), str(Path(sys.argv[2]).parents[1])]
from test_infonce import make_batch, make_module  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
module = DistributedDataParallel(make_module())
batch = make_batch()
n = len(batch["input_ids"]) // world
local = {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}
loss, metrics = module(**local)
loss.backward()
# the logged loss is the mean over processes (as the engine's reduction)
mean_loss = loss.detach().clone()
dist.all_reduce(mean_loss)
mean_loss /= world
if rank == 0:
    grads = {k: p.grad for k, p in module.module.named_parameters() if p.grad is not None}
    torch.save({"loss": mean_loss, "negatives": metrics["negatives"], "grads": grads}, sys.argv[1])
# both leave together: a rank tearing gloo down while the other still saves aborted once under
# load ("terminate called without an active exception")
dist.barrier()
dist.destroy_process_group()
