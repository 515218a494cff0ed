"""Multi-process and DeepSpeed training on a CPU-only machine.

Every run here happens in a child process (this file is also the worker script: ``python
tests/test_distributed.py MODE ARGS.json``), so no process group, DeepSpeed engine or Accelerate
singleton leaks into the rest of the test session:

- single-process DeepSpeed ZeRO-2 and ZeRO-3 through ``lifecycle.train.engine.train``, with the
  rank/world/master environment DeepSpeed needs, the final gather into a plain model, a verified
  ``save_checkpoint``, and resume from a DeepSpeed checkpoint;
- two gloo processes (``torchrun`` + ``ACCELERATE_USE_CPU=1``) against one process with the same
  global batch: same losses, same weights, and only one process writes metrics and checkpoints;
- ``lifecycle train -n 2`` end to end (re-exec under ``accelerate launch``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
RECIPES = REPO / "recipes" / "deepspeed"
BLOCK = 32


# --------------------------------------------------------------------------------------------
# Worker side (runs in the child process; keep imports inside so the parent stays light).
# --------------------------------------------------------------------------------------------


def _load_data(path: str):
    from safetensors.torch import load_file

    from lifecycle.data.packing import PackedData

    t = load_file(path)
    return PackedData(t["train"], t["validation"], BLOCK, "test", "distributed-test-data")


def _worker(mode: str, args: dict) -> None:
    if mode == "deepspeed":
        # The shared-memory reduce kernel is JIT-compiled (a minute of g++ on 2 cores) and only
        # speeds up multi-rank reductions; a one-rank test does not need it.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    sys.path.insert(0, str(HERE.parent))
    from conftest import make_tiny_model

    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import TrainConfig, train

    if mode == "train_supervised":
        from transformers import AutoTokenizer

        from lifecycle.data import load_supervised

        tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"])
        data = load_supervised(args["data"], tokenizer, 48, pad_to="max_length", use_cache=False)
    else:
        data = _load_data(args["data"])
    model = make_tiny_model(args["vocab"], seed=args.get("model_seed", 0))
    cfg = TrainConfig(**args["cfg"])
    result = train(
        model,
        data,
        cfg,
        args["run_dir"],
        resume=args.get("resume", False),
        deepspeed_config=args.get("deepspeed"),
        progress=False,
    )
    if result.is_main_process:
        save_checkpoint(result.model, None, args["output"], lineage={"command": "test"})
        summary = {
            "losses": [row["train_loss"] for row in result.history],
            "final_train_loss": result.final_train_loss,
            "tokens_seen": result.tokens_seen,
            "world": int(os.environ.get("WORLD_SIZE", "1")),
            "threads": torch.get_num_threads(),
        }
        Path(args["summary"]).write_text(json.dumps(summary))


# --------------------------------------------------------------------------------------------
# Test side.
# --------------------------------------------------------------------------------------------

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU",
                "ACCELERATE_USE_DEEPSPEED", "LIFECYCLE_LAUNCHED"):
        env.pop(key, None)
    env.update(
        # Models this small gain nothing from threads, and on a busy 2-core machine OpenMP barriers
        # make a 2-thread matmul up to 100x slower than a 1-thread one.
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        # A fresh extension cache: a test that silently JIT-compiles a DeepSpeed op would blow its time budget.
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra)
    return env


def _run(cmd: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def _spawn_worker(tmp_path: Path, mode: str, args: dict, env: dict, launcher: list[str] | None = None) -> dict:
    spec = tmp_path / f"args-{len(list(tmp_path.glob('args-*.json')))}.json"
    spec.write_text(json.dumps(args))
    _run([*(launcher or [sys.executable]), str(HERE), mode, str(spec)], env)
    return json.loads(Path(args["summary"]).read_text())


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_corpus, tiny_tokenizer):
    """The test corpus packed once and handed to the workers as a safetensors file."""
    from safetensors.torch import save_file

    from lifecycle.data import pack

    data = pack(tiny_corpus, tiny_tokenizer, BLOCK, val_fraction=0.1)
    path = tmp_path_factory.mktemp("dist-data") / "blocks.safetensors"
    save_file({"train": data.train.contiguous(), "validation": data.validation.contiguous()}, str(path))
    return data, str(path), len(tiny_tokenizer)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max().item())


def _no_leftovers(folder: Path) -> None:
    """No temp or trash folders from an interrupted or doubled write anywhere under ``folder``."""
    stray = [p for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name]
    assert not stray, stray


def test_supervised_two_processes_match_one_process(tmp_path, tiny_tokenizer):
    """The prompt/completion path keeps the multi-process guarantee: 2 ranks == 1 rank with accumulation."""
    from lifecycle.data import load_supervised
    from lifecycle.train.engine import TrainConfig, train

    from conftest import make_tiny_model

    rows = [{"prompt": f"Question {i}: what follows {i}?", "completion": f"{i + 1} it is"} for i in range(40)]
    data_file = tmp_path / "qa.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    base = dict(steps=4, lr=3e-3, warmup_steps=1, micro_batch_size=2, eval_every=0, log_every=1)
    env = _child_env(tmp_path, ACCELERATE_USE_CPU="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = _spawn_worker(
        tmp_path, "train_supervised",
        dict(data=str(data_file), tokenizer=str(tmp_path / "tok"), vocab=len(tiny_tokenizer), cfg=dict(base, grad_accum=1),
             run_dir=str(tmp_path / "two" / "run"), output=str(tmp_path / "two" / "out"), summary=str(tmp_path / "two.json")),
        env, launcher,
    )
    data = load_supervised(data_file, tiny_tokenizer, 48, pad_to="max_length", use_cache=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train(make_tiny_model(len(tiny_tokenizer)), data, TrainConfig(**base, grad_accum=2), tmp_path / "one",
                    progress=False)
    finally:
        torch.set_num_threads(threads)
    assert two["world"] == 2
    assert two["losses"] == pytest.approx([r["train_loss"] for r in one.history], abs=1e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_single_process_deepspeed_trains_saves_and_resumes(tmp_path, packed, stage):
    """ZeRO-2/3 on one CPU process: train, gather into a plain model, save (with reload check), resume."""
    data, data_file, vocab = packed
    env = _child_env(tmp_path, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(_free_port()))
    cfg = dict(steps=6, lr=3e-3, warmup_steps=1, micro_batch_size=4, grad_accum=2, eval_every=0, save_every=3,
               log_every=1)
    common = dict(data=data_file, vocab=vocab, cfg=cfg, run_dir=str(tmp_path / "run"),
                  deepspeed=str(RECIPES / f"zero{stage}.json"))

    full = _spawn_worker(tmp_path, "deepspeed",
                         dict(common, output=str(tmp_path / "full"), summary=str(tmp_path / "full.json")), env)
    assert len(full["losses"]) == 6 and all(l == l for l in full["losses"])
    assert full["losses"][-1] < full["losses"][0]
    assert full["tokens_seen"] == 6 * 4 * 2 * BLOCK
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "accelerate").is_dir()
    # The saved output is a plain HF checkpoint with every weight (save_checkpoint verified the reload).
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "full")
    assert all(p.numel() > 0 for p in plain.parameters())

    # Resume from the step-3 DeepSpeed checkpoint with a differently initialised model, this time
    # without the rendezvous variables: make_accelerator fills them in for a one-process run.
    env = _child_env(tmp_path)
    resumed = _spawn_worker(tmp_path, "deepspeed",
                            dict(common, output=str(tmp_path / "resumed"), summary=str(tmp_path / "resumed.json"),
                                 resume=True, model_seed=123), env)
    assert resumed["final_train_loss"] == pytest.approx(full["final_train_loss"], abs=1e-5)
    assert resumed["losses"][-3:] == pytest.approx(full["losses"][-3:], abs=1e-5)
    _assert_same_weights(_weights(tmp_path / "full"), _weights(tmp_path / "resumed"), atol=1e-5)
    _no_leftovers(tmp_path)


def test_two_processes_match_one_process_with_accumulation(tmp_path, packed):
    """2 gloo ranks x micro 4 == 1 rank x micro 4 x accum 2: same global batches, losses and weights."""
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import TrainConfig, train

    from conftest import make_tiny_model

    data, data_file, vocab = packed
    steps = 6
    base = dict(steps=steps, lr=3e-3, warmup_steps=1, micro_batch_size=4, eval_every=0, save_every=3, log_every=1)

    # Two processes, one micro-batch each per step.
    env = _child_env(tmp_path, ACCELERATE_USE_CPU="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = _spawn_worker(
        tmp_path, "train",
        dict(data=data_file, vocab=vocab, cfg=dict(base, grad_accum=1), run_dir=str(tmp_path / "two" / "run"),
             output=str(tmp_path / "two" / "out"), summary=str(tmp_path / "two.json")),
        env, launcher,
    )
    assert two["world"] == 2 and two["tokens_seen"] == steps * 2 * 4 * BLOCK

    # One process (in this one: no process group), two accumulated micro-batches per step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train(make_tiny_model(vocab), data, TrainConfig(**base, grad_accum=2), tmp_path / "one" / "run",
                    progress=False)
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(one.model, None, tmp_path / "one" / "out", lineage={"command": "test"})
    assert one.tokens_seen == two["tokens_seen"]
    assert two["losses"] == pytest.approx([r["train_loss"] for r in one.history], abs=1e-4)
    _assert_same_weights(_weights(tmp_path / "one" / "out"), _weights(tmp_path / "two" / "out"), atol=1e-4)

    # Exactly one writer: one metrics row per step, one complete checkpoint, no stray temp folders.
    run = tmp_path / "two" / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]
    ckpt = run / "checkpoints" / "step-3"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "model.safetensors", "optimizer.pt", "rng-0.pt", "rng-1.pt", "trainer_state.json"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["out", "run"]
    _no_leftovers(tmp_path / "two")


def test_cli_refuses_multi_process_deepspeed_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine -n 2 --deepspeed is a real run")
    proc = subprocess.run(
        [sys.executable, "-m", "lifecycle", "train", "-n", "2", "--deepspeed", str(RECIPES / "zero2.json"),
         "--config", "micro", "--output", str(tmp_path / "model")],
        capture_output=True, text=True, env=_child_env(tmp_path), timeout=120, cwd=REPO,
    )
    assert proc.returncode != 0
    assert "DeepSpeed with several processes needs GPUs" in proc.stderr
    assert not (tmp_path / "model").exists()


def test_cli_train_with_two_processes(tmp_path):
    """``lifecycle train -n 2`` re-execs under accelerate launch; rank 0 alone writes the output."""
    out = tmp_path / "model"
    env = _child_env(tmp_path)
    _run(
        [sys.executable, "-m", "lifecycle", "train", "-n", "2", "--config", "micro", "--data", "shakespeare",
         "--output", str(out), "block_size=32", "max_train_tokens=40000", "train.micro_batch_size=4",
         "train.eval_every=0", "train.save_every=3", "train.steps=6", "train.log_every=1"],
        env,
    )
    lineage = json.loads((out / "lifecycle.json").read_text())
    assert lineage["metrics"]["tokens_seen"] == 6 * 2 * 4 * 32  # two ranks' micro-batches per step
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    run = tmp_path / ".model.run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]
    assert {"rng-0.pt", "rng-1.pt"} <= {p.name for p in (run / "checkpoints" / "step-3").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "torch_extensions") == [".model.run", "model"]
    _no_leftovers(tmp_path)


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(Path(sys.argv[2]).read_text()))
