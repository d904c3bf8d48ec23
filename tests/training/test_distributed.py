"""Two gloo processes on one machine (as torchrun would start them) train together and end identical."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from training.engine.rng import seed_everything
from training.model import build_model

from training.engine.config import train_config_from_dict
from training.engine.metrics_log import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, raw: dict, out_dir: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    from training.engine import distributed as ddp
    from training.engine.launch import build_trainer

    cfg = train_config_from_dict(raw)
    info = ddp.init_distributed("cpu")
    try:
        first = build_trainer(cfg, info)
        assert isinstance(first.model, torch.nn.parallel.DistributedDataParallel)
        assert first.fit(stop_at=1).iteration == 1  # interrupted; rank 0 wrote last.pt
        trainer = build_trainer(cfg, info)
        state = trainer.fit(resume=True)  # rank 0 reads last.pt and shares it with rank 1
        torch.save(
            {"iteration": state.iteration, "params": {k: v.detach().clone() for k, v in trainer.bare_model.state_dict().items()}},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        ddp.cleanup(info)


def test_two_gloo_processes_agree_through_an_interruption(tiny_config, tmp_path: Path) -> None:
    raw = tiny_config("ddp", max_iters=2)
    mp.spawn(_worker, args=(2, _free_port(), raw, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["iteration"] == r1["iteration"] == 2
    for key, value in r0["params"].items():
        assert torch.equal(value, r1["params"][key]), f"ranks disagree on {key}"
    seed_everything(0)
    initial = build_model(train_config_from_dict(raw).model).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in r0["params"].items()), "no step changed the weights"
    # rank 0 alone wrote the log and the checkpoint; lr 0.01 per 8 images scaled to the total batch 2 x 2,
    # half-way through the warm-up, and past the decay at epoch 1 of 2 (= iteration 1 of max_iters 2)
    records = [r for r in read_metrics(Path(raw["output_dir"]) / "metrics.jsonl") if r["type"] == "iter"]
    assert [r["iteration"] for r in records] == [1, 2]
    assert records[1]["lr"] == pytest.approx(0.005 * (0.001 * 0.5 + 0.5) * 0.1)
    assert (Path(raw["output_dir"]) / "last.pt").is_file()
