"""Shared fixtures: hermetic offline environment, a tiny tokenizer and tiny LLaMA-family models.

Tiny models are built from configs in memory (mergekit/torchtune style), never downloaded.
"""

from __future__ import annotations

import os
import tempfile

# Before any Hugging Face import: these are read at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
_CACHE = tempfile.mkdtemp(prefix="lifecycle-test-cache-")
os.environ.setdefault("LIFECYCLE_CACHE", _CACHE)
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(_CACHE, "datasets"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    from lifecycle.paths import shared_data_dir

    return shared_data_dir()


@pytest.fixture(scope="session")
def tiny_corpus():
    """A small slice of real text (the shared Shakespeare corpus) as a Corpus."""
    from lifecycle.data.sources import Corpus

    text = (shared_data() / "corpora" / "tinyshakespeare.txt").read_text()[:60_000]
    return Corpus(name="shakespeare-60k", train=[text])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus):
    """A 512-token byte-level BPE trained in-process on the corpus slice."""
    from lifecycle.data.tokenizer import train_bpe

    return train_bpe(tiny_corpus, 512)


def make_tiny_model(
    vocab_size: int,
    model_type: str = "llama",
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    tie: bool = True,
    seed: int = 0,
    **extra,
):
    """A randomly initialised LLaMA-family causal LM small enough for unit tests."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(len(tiny_tokenizer))


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model, tiny_tokenizer):
    """A tiny model saved as a lifecycle checkpoint folder."""
    from lifecycle.model.io import save_checkpoint

    return save_checkpoint(tiny_model, tiny_tokenizer, tmp_path / "tiny-ckpt", lineage={"command": "test"})


def cli_env(**extra: str) -> dict:
    """The environment for CLI subprocesses: this checkout's code first, whatever the working directory
    (an editable install may point at another checkout)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def cli_runner():
    """Run the CLI in-process; returns (exit_code, combined output)."""
    import subprocess
    import sys

    def run(*args: str, cwd: Path | None = None, timeout: int = 600) -> tuple[int, str]:
        proc = subprocess.run(
            [sys.executable, "-m", "lifecycle", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env=cli_env(),
        )
        return proc.returncode, proc.stdout + proc.stderr

    return run


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (the CI machines are shared; more threads only contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
