"""Two gloo processes train through ``train()`` as under torchrun: each rank sees its own share of
every global batch, and the gradients they average keep the ranks identical while the weights move."""

from __future__ import annotations

import os
import socket

import torch
import torch._dynamo  # noqa: F401  DDP and AdamW import it lazily (seconds); once here, shared by forked ranks
import torch.multiprocessing as mp
from _trainer_helpers import small_config
from safetensors.torch import load_file, save_file

from nasdm_aug.training import run as _run  # noqa: F401  imported before the fork, shared by the ranks
from nasdm_aug.training.checkpoint import latest_checkpoint
from nasdm_aug.training.metric_log import read_log

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, store: str, run: str, dump: str) -> None:
    # what torchrun sets for each process
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from nasdm_aug.training import trainer as trainer_mod
    from nasdm_aug.training.run import train

    run_loop = trainer_mod.Trainer.run

    def run_and_dump(self):  # keep each rank's first and final weights and its batches for the parent
        first = {f"init.{k}": v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}
        batches = torch.tensor([list(b) for b in self._loader().batch_sampler])
        out = run_loop(self)
        final = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file({**final, **first, "batches": batches}, f"{dump}/rank{rank}.safetensors")
        return out

    trainer_mod.Trainer.run = run_and_dump
    train("mask", store, "Train", small_config("mask", steps=3, log_every=1, ckpt_every=3), run, device="cpu", progress=False)


def test_two_gloo_ranks_end_identical(store_path, tmp_path):
    run, dump = tmp_path / "run", tmp_path
    # fork: the children reuse the parent's imported torch (spawn re-imports it, ~5 s CPU per rank)
    mp.start_processes(
        _worker, args=(_free_port(), str(store_path), str(run), str(dump)), nprocs=WORLD, join=True, start_method="fork"
    )
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    b0, b1 = w0.pop("batches"), w1.pop("batches")
    assert b0.shape == b1.shape == (3, 2)  # each step: two patches a rank, none seen by both
    assert all(not set(b0[i].tolist()) & set(b1[i].tolist()) for i in range(3))
    init = {k[5:]: w0.pop(k) for k in list(w0) if k.startswith("init.")}
    init1 = {k[5:]: w1.pop(k) for k in list(w1) if k.startswith("init.")}
    assert all(torch.equal(init[k], init1[k]) for k in init)  # one seed, one start
    assert any(not torch.equal(init[k], w0[k]) for k in w0)  # the weights moved
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    saved = load_file(str(latest_checkpoint(run) / "model.safetensors"))  # written by rank 0 alone
    assert all(torch.equal(saved[k], w0[k]) for k in w0)
    records = read_log(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[-1]["samples_per_s"] / records[-1]["it_per_s"] == 2 * WORLD  # global batch
    assert records[-1]["epoch"] == 3 * 2 * WORLD / 4


def test_one_meaning_of_device(monkeypatch):
    from nasdm_aug.training.distributed import pick_device

    gpu = torch.cuda.is_available()
    for auto in (None, "auto"):
        assert pick_device(auto, local_rank=0) == (torch.device("cuda", 0) if gpu else torch.device("cpu"))
    assert pick_device("cpu") == torch.device("cpu")
    # a machine with 4 GPUs (a GPU this machine lacks is refused: tests/test_devices.py)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert pick_device("cuda", local_rank=1) == torch.device("cuda", 1)  # this rank's GPU
    assert pick_device("cuda:3", local_rank=1) == torch.device("cuda", 3)
