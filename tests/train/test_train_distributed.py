"""DDP with 2 gloo processes trains exactly like one process on the whole batch (float64):
the distributed loss, the head's synced per-view BN and DDP's gradient average together."""

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ListLoader, view_major_batch

from helpers import assert_close
from stablerep_fast.train import CHECKPOINT, load_checkpoint, train

F64 = dict(rtol=1e-7, atol=1e-9)  # float64; Adam divides by sqrt(v): near-zero gradients amplify round-off a little
N, M, SIZE, STEPS = 4, 2, 16, 3


def _batches(captions: range):
    """The whole batch's rows of ``captions``, view-major, for each step."""
    out = []
    for step in range(STEPS):
        images, labels = view_major_batch(N, M, SIZE, dtype=torch.float64, seed=step)
        rows = torch.cat([torch.arange(v * N, (v + 1) * N)[captions.start : captions.stop] for v in range(M)])
        out.append((images[rows], labels[rows]))
    return out


def _worker(rank, world, init_file, config):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_default_dtype(torch.float64)
    per_rank = N // world
    train(config, ListLoader(_batches(range(rank * per_rank, (rank + 1) * per_rank))))
    dist.barrier()  # no rank may tear gloo down while another still talks to it
    dist.destroy_process_group()
    os._exit(0)  # torch 2.15 + gloo sometimes aborts at interpreter exit; the checkpoint is written


def test_ddp_two_gloo_ranks_equal_one_process(micro_config, tmp_path):
    config = replace(micro_config, captions_per_batch=N, images_per_caption=M, steps=STEPS, warmup_steps=1,
                     checkpoint_every=STEPS, base_lr=1e-2, loss_backend="cpp")  # fmt: skip
    ddp_config = replace(config, out=str(tmp_path / "ddp"))
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), ddp_config), nprocs=2, join=True)

    single_config = replace(config, out=str(tmp_path / "single"))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train(single_config, ListLoader(_batches(range(N))))
    finally:
        torch.set_default_dtype(default)

    ddp = load_checkpoint(Path(ddp_config.out) / CHECKPOINT)["model"]
    single = load_checkpoint(Path(single_config.out) / CHECKPOINT)["model"]
    for name, expected in single.items():
        assert_close(ddp[name], expected, **F64, name=name)
    moved = [name for name, p in single.items() if p.dtype == torch.float64 and "running" not in name]
    assert moved, "no float64 parameters: the test did not run in float64"
