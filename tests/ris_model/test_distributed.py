import json
import os
import subprocess
import sys

import torch

from ris_model.training.distributed import DistContext


def test_shards_cover_the_data_evenly():
    order = torch.arange(10)
    shards = [DistContext(rank=r, world_size=3).shard(order) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping, like DistributedSampler
    assert set(torch.cat(shards).tolist()) == set(range(10))


def test_torchrun_two_processes_on_gloo(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RIS_MODEL_WANDB": "off"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "ris_model.cli", "train", "--preset", "tiny", "--epochs", "2", "--run-dir", str(run_dir),
           "--set", "train.train_scenes=128", "--set", "train.val_scenes=32", "--set", "model.width=32",
           "--eval-n", "0", "--no-health"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if l["kind"] == "step"]
    # 128 scenes split over 2 ranks, batch 32: 2 steps per epoch, and only rank 0 writes
    assert len(steps) == 4 and {l["rank"] for l in lines} == {0}
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert (run_dir / "checkpoints" / "last.pt").is_file()
