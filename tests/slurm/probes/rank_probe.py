"""Run by a template under its real launcher: joins the gloo process group and reports ranks."""

import os

import torch
import torch.distributed as dist

KEYS = ("RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def main() -> None:
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    fields = {k: os.environ.get(k, "") for k in KEYS}
    fields["NODE"] = os.environ.get("SLURMD_NODENAME", "")
    fields["ACCELERATE_USE_CPU"] = os.environ.get("ACCELERATE_USE_CPU", "")
    fields["ALLREDUCE"] = str(int(total.item()))
    print("PROBE " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
