"""Distributed training on CPU (gloo): all_gather_with_grad, a DDP step of the MMD, torchrun.

The DDP check compares two gradients of the MMD. In the two-rank step each rank computes the
loss on the gathered samples but owns only its part of the batch. The reference is one process
with the whole batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.bundle import run

from symot_med.bundle.distributed import all_gather_with_grad, is_distributed, is_main_process
from symot_med.bundle.network import build_translation_network, load_translation_network
from symot_med.losses.mmd import mmd2

WORLD_SIZE = 2
# Rank r owns ROWS[r] samples, so the test covers unequal batch sizes.
ROWS = (3, 2)
FEATURES = 4


def _samples(seed: int, rows: int) -> torch.Tensor:
    return torch.randn(rows, FEATURES, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _batch_of_rank(rank: int) -> torch.Tensor:
    return _samples(100 + rank, ROWS[rank])


def _model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Linear(FEATURES, FEATURES).double()


def _check_gather(rank: int) -> None:
    local = _batch_of_rank(rank).requires_grad_(True)
    weights = _samples(5, sum(ROWS))

    gathered = all_gather_with_grad(local)
    (weights * gathered**2).sum().backward()

    expected = torch.cat([_batch_of_rank(r) for r in range(WORLD_SIZE)])
    offset = sum(ROWS[:rank])
    own_weights = weights[offset : offset + ROWS[rank]]
    torch.testing.assert_close(gathered.detach(), expected)
    # Every rank computes the same loss, and the gather sums the gradients over ranks.
    torch.testing.assert_close(local.grad, WORLD_SIZE * 2.0 * own_weights * local.detach())


def _check_ddp_mmd_step(rank: int) -> None:
    target = _samples(9, 6)
    model = torch.nn.parallel.DistributedDataParallel(_model())

    outputs = all_gather_with_grad(model(_batch_of_rank(rank)))
    mmd2(outputs, target, estimator="biased").backward()

    reference = _model()
    full_batch = torch.cat([_batch_of_rank(r) for r in range(WORLD_SIZE)])
    mmd2(reference(full_batch), target, estimator="biased").backward()
    for distributed, single in zip(model.module.parameters(), reference.parameters()):
        torch.testing.assert_close(distributed.grad, single.grad)


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    result = Path(result_dir) / f"rank{rank}.txt"
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
        assert is_distributed()
        assert is_main_process() == (rank == 0)
        _check_gather(rank)
        _check_ddp_mmd_step(rank)
        result.write_text("ok")
    except Exception:
        result.write_text(traceback.format_exc())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
@pytest.mark.skipif(sys.platform == "win32", reason="file:// process group initialisation is POSIX-only here")
def test_all_gather_with_grad_two_ranks(tmp_path):
    init_file = tmp_path / "process_group"

    mp.start_processes(_worker, args=(str(init_file), str(tmp_path)), nprocs=WORLD_SIZE, join=True, start_method="spawn")

    for rank in range(WORLD_SIZE):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "ok", f"rank {rank}"


def test_all_gather_without_process_group_is_identity():
    tensor = torch.arange(6.0).reshape(3, 2)

    assert not is_distributed()
    assert is_main_process()
    assert all_gather_with_grad(tensor) is tensor


def test_all_gather_rejects_scalar():
    with pytest.raises(ValueError, match="batch dimension"):
        all_gather_with_grad(torch.tensor(1.0))


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available")
def test_multi_gpu_config_runs_under_torchrun(tmp_path):
    """Train the tiny flow with two CPU processes through multi_gpu_train_flow.json (gloo backend)."""
    from test_bundles import SPLIT, TINY_AUTOENCODER, TINY_FLOW, TINY_GEOMETRY, config, tiny_overrides, write_tiny_cohort

    cohort = write_tiny_cohort(tmp_path / "cohort")
    overrides = {**tiny_overrides("t1t2", tmp_path / "models"), "work_dir": str(tmp_path / "work")}
    run(
        config_file=config("t1t2", "train_autoencoder"),
        dataset_dir=str(cohort["t1t2"]),
        **overrides,
        **SPLIT,
        **{"train_config#epochs": 1, "train_config#batch_size": 8},
    )
    overrides.pop("spacing")
    arguments = {
        "config_file": [config("t1t2", "train_flow"), config("t1t2", "multi_gpu_train_flow")],
        **overrides,
        "train_config#epochs": 1,
        "train_config#batch_size": 2,
    }
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(arguments))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
               "-m", "monai.bundle", "run", "--args_file", str(args_file)]

    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    network = build_translation_network(TINY_AUTOENCODER, TINY_GEOMETRY["slice_size"], TINY_FLOW, "forward")
    load_translation_network(network, tmp_path / "models" / "model.pt")
