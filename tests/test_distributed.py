"""Data-parallel training under torchrun (dgm.train.distributed): two CPU processes (gloo) train the
same run as one process with the same global batch, only rank 0 writes, resume follows the same
curve, and a bad start is refused with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ddp_worker
from dgm import run
from dgm.data.core import Batch
from dgm.models.base import NoiseShard, noise_shard, randn, randint
from dgm.train import distributed
from dgm.train.distributed import World, WorldError

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")
WORKER = Path(ddp_worker.__file__)


def torchrun(*args: str, nproc: int = 2, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), *args], capture_output=True, text=True, timeout=timeout, env=env)


def close(a: Path, b: Path) -> None:
    """The weights of two runs agree to float tolerance, and so do their logged curves."""
    wa, wb = load_file(a / "weights.safetensors"), load_file(b / "weights.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        scale = max(1.0, wa[k].float().abs().max().item())
        assert (wa[k].float() - wb[k].float()).abs().max().item() <= 1e-4 * scale, k
    rows_a, rows_b = (Path(p / "metrics.csv").read_text().splitlines() for p in (a, b))
    assert rows_a[0] == rows_b[0] and len(rows_a) == len(rows_b) > 1
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        for x, y in zip(ra.split(","), rb.split(",")):
            assert (x == y == "") or float(x) == pytest.approx(float(y), rel=1e-4, abs=1e-5, nan_ok=True)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ddp")
    done = torchrun(str(WORKER), str(base))
    assert done.returncode == 0, done.stderr[-3000:]
    return base


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("single")
    torch.manual_seed(0)
    for name in ddp_worker.JOBS:
        run.train(ddp_worker.config(name), base / name)
    return base


@pytest.mark.parametrize("name", list(ddp_worker.JOBS))
def test_two_processes_train_the_run_of_one(two_processes: Path, one_process: Path, name: str) -> None:
    close(two_processes / name, one_process / name)


def test_only_rank_0_writes(two_processes: Path) -> None:
    rank0 = json.loads((two_processes / "writes-0.json").read_text())
    rank1 = json.loads((two_processes / "writes-1.json").read_text())
    assert rank1 == []
    assert any(w.endswith("vae/weights.safetensors.next") for w in rank0)  # the hook saw the checkpoint
    assert any("metrics.csv" in w for w in rank0) and any("config.json" in w for w in rank0)


def test_resume_under_two_processes_keeps_the_curve(two_processes: Path, one_process: Path) -> None:
    close(two_processes / "resume", one_process / "vae")  # one epoch, stopped, resumed to two


def test_a_two_process_checkpoint_resumes_in_one(two_processes: Path, one_process: Path) -> None:
    run.train(ddp_worker.config("vae"), two_processes / "half", resume=True)  # one epoch under two, the second alone
    close(two_processes / "half", one_process / "vae")


def test_a_single_process_checkpoint_resumes_under_two(tmp_path: Path, one_process: Path) -> None:
    run.train(ddp_worker.config("vae", **{"train.epochs": 1}), tmp_path / "r")
    done = torchrun("-m", "dgm", "train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    close(tmp_path / "r", one_process / "vae")


def test_two_processes_share_an_evaluation_and_give_the_numbers_of_one(tmp_path: Path) -> None:
    """``torchrun -m dgm eval``: each process computes every second batch of IWAE bounds, ELBOs and
    posterior statistics and every second batch of samples and features (each from its own seed);
    the gathered results equal one process's, and rank 0 alone prints and records them."""
    run.train(ddp_worker.config("vae", **{"train.epochs": 1}), tmp_path / "r")
    # 300 examples: 4 batches of IWAE k=100 bounds; 1200 samples: 3 batches (2 for rank 0, 1 for rank 1)
    flags = ["--metrics", "nll,elbo,posterior_collapse,fid,kid", "--k", "100", "--max-examples", "300",
             "--num-samples", "1200", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = torchrun("-m", "dgm", "eval", str(tmp_path / "r"), *flags, "--json", str(tmp_path / "two.json"),
                    env={**env, "DGM_CACHE": str(tmp_path / "cache2")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("qualifier") == 1  # one table: rank 0's
    single = subprocess.run([sys.executable, "-m", "dgm", "eval", str(tmp_path / "r"), *flags,
                             "--json", str(tmp_path / "one.json")], capture_output=True, text=True, timeout=300,
                            env={**env, "OMP_NUM_THREADS": "1", "DGM_CACHE": str(tmp_path / "cache1")})
    assert single.returncode == 0, single.stderr[-3000:]
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert [r["metric"] for r in two] == [r["metric"] for r in one] and len(one) >= 6
    for a, b in zip(two, one):
        assert a["value"] == pytest.approx(b["value"], rel=1e-6, abs=1e-9), a["metric"]
    assert len(list((tmp_path / "cache2").glob("*.safetensors"))) == 1  # the test split's features, written once


def errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("dgm: error:")]


@pytest.mark.parametrize("args, says", [
    (["--batch-size", "1"], "smaller than the 2 processes"),
    (["--set", "train.backend=nccl"], "needs a CUDA GPU"),
])
def test_a_bad_start_is_refused_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    if "nccl" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: NCCL is allowed")
    out = tmp_path / "run"
    done = torchrun("-m", "dgm", "train", "vae", "--data", "digits", "--epochs", "1", "--quiet", "--out", str(out),
                    *args)
    assert done.returncode != 0
    assert len(errors(done)) == 1 and says in errors(done)[0], done.stderr[-2000:]
    assert not out.exists()  # refused before anything was written


def test_processes_started_with_different_settings_are_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500), WORLD_SIZE="2")
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "dgm", "train", "vae", "--data", "digits", "--epochs", str(1 + rank),
                               "--quiet", "--out", str(out)], env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    stderr = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    lines = [line for s in stderr for line in s.splitlines() if line.startswith("dgm: error:")]
    assert len(lines) == 1 and "started with different settings" in lines[0], stderr
    assert not out.exists()


def test_torchrun_needs_an_output_folder() -> None:
    done = torchrun("-m", "dgm", "train", "vae", "--data", "digits", "--epochs", "1", "--quiet")
    assert len(errors(done)) == 1 and "--out" in errors(done)[0], done.stderr[-2000:]


# --- the pieces, in one process --------------------------------------------------------------------
def test_shards_are_contiguous_and_cover_the_global_batch() -> None:
    x = torch.arange(12.0)[:, None]
    labelled = torch.tensor([True] * 8 + [True] * 4)  # 8 examples, then 4 labelled extra ones
    batch = Batch(x=x, labelled=labelled)
    parts = [distributed.shard(batch, World(r, 2), labelled_extra=4) for r in range(2)]
    assert parts[0].x.flatten().tolist() == [0, 1, 2, 3, 8, 9]
    assert parts[1].x.flatten().tolist() == [4, 5, 6, 7, 10, 11]
    assert distributed.shard(batch, distributed.SINGLE) is batch


def test_the_local_batch_is_an_equal_share() -> None:
    assert distributed.check_batch(World(0, 4), 64) == 16
    assert distributed.check_batch(distributed.SINGLE, 7) == 7
    for size, labelled in [(3, 0), (8, 2)]:
        with pytest.raises(WorldError):
            distributed.check_batch(World(0, 4), size, labelled)


@pytest.mark.parametrize("k", [1, 3])
def test_sharded_noise_is_the_processes_rows_of_the_global_draw(k: int) -> None:
    """k draws per example (sample-major), a local batch of 2 of a global 6: process r gets rows
    r*2..r*2+1 of each of the k blocks of the one-process draw, from the same generator."""
    like = torch.empty(0)
    whole = randn((k * 6, 5), like=like, generator=torch.Generator().manual_seed(1)).view(k, 6, 5)
    ints = randint(10, (k * 6,), like=like, generator=torch.Generator().manual_seed(2)).view(k, 6)
    for r in range(3):
        with noise_shard(NoiseShard(r, 3, 2)):
            mine = randn((k * 2, 5), like=like, generator=torch.Generator().manual_seed(1))
            mine_ints = randint(10, (k * 2,), like=like, generator=torch.Generator().manual_seed(2))
            other = randn((7, 5), like=like, generator=torch.Generator().manual_seed(1))  # not per example
        assert torch.equal(mine, whole[:, 2 * r:2 * r + 2].reshape(k * 2, 5))
        assert torch.equal(mine_ints, ints[:, 2 * r:2 * r + 2].reshape(k * 2))
        assert torch.equal(other, randn((7, 5), like=like, generator=torch.Generator().manual_seed(1)))


def test_the_world_comes_from_torchrun_s_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.launched() == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched() == World(3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(Exception, match="torchrun"):
        distributed.launched()
    assert distributed.backend_for(torch.device("cpu"), "auto") == "gloo"
    with pytest.raises(WorldError, match="unknown train.backend"):
        distributed.backend_for(torch.device("cpu"), "mpi")


def test_spread_work_comes_back_in_order_with_each_piece_s_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Five pieces over two processes (3 and 2 each): gathered in the order of the pieces, and piece i
    draws the same random numbers in the process that computes it as in one process."""
    from dgm.eval import core
    from dgm.eval.core import EvalContext

    data = run.load_data(ddp_worker.config("vae"), "test").subset(4)

    def draw(piece: int) -> tuple[int, torch.Tensor]:
        return piece, torch.rand(3)

    whole = EvalContext(data, progress=False).spread(range(5), draw, total=5)

    class Gathered(Exception):
        pass

    shares: list[list] = []

    def record(value: list, world: World) -> list:  # each process's own list, as it would enter all_gather
        shares.append(value)
        raise Gathered

    monkeypatch.setattr(core, "gather", record)
    for r in range(2):
        with pytest.raises(Gathered):
            EvalContext(data, progress=False, world=World(r, 2)).spread(range(5), draw, total=5)
    assert [[i for i, _ in share] for share in shares] == [[0, 2, 4], [1, 3]]
    monkeypatch.setattr(core, "gather", lambda value, world: shares)  # what all_gather returns to every process
    together = EvalContext(data, progress=False, world=World(1, 2)).spread(range(5), draw, total=5)
    assert [i for i, _ in together] == [0, 1, 2, 3, 4]
    for (_, a), (_, b) in zip(together, whole):
        assert torch.equal(a, b)
