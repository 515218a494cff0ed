"""The command line: help reads well, bad input is one line and a non-zero exit, nothing half-written."""

from __future__ import annotations

import pytest

from lifecycle.cli import parse_overrides


def _one_error_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert lines, "no output"
    assert "Traceback" not in output, output
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


def test_overrides_parse_yaml_scalars_and_nesting():
    assert parse_overrides(["train.steps=10", "data=wikitext", "eval.tasks=[a, b]", "train.lr=3e-3"]) == {
        "train": {"steps": 10, "lr": 3e-3},
        "data": "wikitext",
        "eval": {"tasks": ["a", "b"]},
    }


def test_help_lists_commands(cli_runner):
    code, out = cli_runner("--help")
    assert code == 0
    for name in ("train", "eval", "run", "push", "ls"):
        assert name in out
    for sub in ("train", "eval", "run", "push"):
        code, out = cli_runner(sub, "--help")
        assert code == 0 and "Usage" in out, out


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "/nonexistent/model", "-o", "{tmp}/out"], "model not found"),
        (["train", "--config", "tiny", "--model", "x", "-o", "{tmp}/out"], "exactly one of model"),
        (["train", "--config", "huge", "-o", "{tmp}/out", "train.steps=1"], "unknown model config"),
        (["train", "--config", "micro", "-o", "{tmp}/out", "train.stepz=1"], "train.stepz: unknown option"),
        (["train", "--config", "micro", "-o", "{tmp}/out", "--data", "{tmp}/empty.txt"], "is empty"),
        (["train", "--config", "micro", "-o", "{tmp}/out", "nokey"], "not key=value"),
        (["eval", "--model", "{tmp}/fake.gguf"], "not a GGUF"),
        (["run", "{tmp}/missing.yaml"], "recipe not found"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(cli_runner, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    code, out = cli_runner(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code != 0
    assert message in _one_error_line(out)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_before_any_work(cli_runner, tiny_checkpoint):
    before = sorted(p.name for p in tiny_checkpoint.iterdir())
    code, out = cli_runner("train", "--config", "micro", "-o", str(tiny_checkpoint), "train.steps=1")
    assert code != 0 and "exists" in _one_error_line(out)
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == before


def test_non_llama_model_is_refused(cli_runner, tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tiny_tokenizer))).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    code, out = cli_runner("train", "--model", str(folder), "-o", str(tmp_path / "out"), "train.steps=1")
    assert code != 0 and "not supported yet" in _one_error_line(out)
    assert not (tmp_path / "out").exists()


def test_train_cli_writes_a_loadable_checkpoint_with_card(cli_runner, tmp_path):
    out = tmp_path / "out"
    code, text = cli_runner("train", "--config", "micro", "--data", "shakespeare", "-o", str(out), "block_size=32",
                            "max_train_tokens=20000", "train.steps=6", "train.micro_batch_size=4")
    assert code == 0, text
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    card = (out / "README.md").read_text()
    assert card.startswith("---") and "lifecycle-train" in card and "tokens_seen" in card
    assert (out / "loss.png").stat().st_size > 1000 and (out / "metrics.jsonl").is_file()
