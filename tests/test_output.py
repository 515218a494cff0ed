"""What a user sees while lifecycle runs: one progress line per evaluation instead of lm-eval's output,
readable numbers, a log line per model load and per DeepSpeed set-up, one summary at the end of
every command, the run folder that is left behind, and `ls` / `options` for every command.

Commands run in process through the CLI's error boundary (no `lifecycle.cli.main`, so none of its
environment defaults help: the library itself must be quiet), on the tiny models of conftest.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_model

# What lm-eval and datasets print on their own during an evaluation.
LEAKS = ("Running loglikelihood requests", "Tokenizing inputs", "bootstrapping for stddev", "Generating test split",
         "it/s]", "`pretrained` model kwarg", "already-initialized model")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def _cli(*args: str) -> int:
    from lifecycle.boundary import run_guarded
    from lifecycle.cli import app

    return run_guarded(app, list(args))


def _no_leaks(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} leaked:\n{text[-3000:]}"


# -- numbers --------------------------------------------------------------------------------------------


def test_numbers_are_readable_at_every_magnitude():
    from lifecycle.display import count, duration, number, short_count

    assert number(2302318768.897) == "2.30e9"
    assert number(859804221222.9823) == "8.60e11"
    assert number(0.61) == "0.6100" and number(0.02) == "0.0200"  # lm-eval's accuracies, as cards always showed them
    assert number(2.302585) == "2.3026" and number(123.4567) == "123.46" and number(12345.67) == "12,346"
    assert number(0.0000123) == "1.23e-5" and number(0.0) == "0.0000" and number(-0.5) == "-0.5000"
    assert number(2.302585, 3) == "2.303" and number(float("nan")) == "nan" and number(None) == "-"
    assert number(1234567) == "1,234,567" and count(8192) == "8,192" and count(None) == "-"
    assert short_count(149_664) == "150k" and short_count(134_515_008) == "135M" and short_count(999) == "999"
    assert duration(8.24) == "8.2 s" and duration(245) == "4 min 05 s" and duration(7380) == "2 h 03 min"


def test_card_and_table_show_a_huge_perplexity_readably(capsys):
    from lifecycle.eval.harness import EvalReport
    from lifecycle.model.card import add_eval_record, render_model_card

    scores = {"lambada": {"perplexity": 2302318768.897, "perplexity_stderr": 3194994558090.6143, "acc": 0.25}}
    card = render_model_card(add_eval_record({"command": "train"}, scores, {"n_samples": {"lambada": 4}}))
    body = card.split("\n---\n", 1)[1]  # the front matter's model-index keeps the exact value, for the Hub
    assert "| lambada | perplexity | 2.30e9 ± 3.19e12 |" in body and "2302318768" not in body
    EvalReport(scores=scores, settings={"n_samples": {"lambada": 4}}).print_table()
    table = capsys.readouterr().out
    assert "2.30e9" in table and "3.19e12" in table and "0.2500" in table and "2302318768" not in table


# -- lm-eval's output ---------------------------------------------------------------------------------------


def test_evaluate_shows_one_progress_line_instead_of_lm_evals_output(tiny_model, tiny_tokenizer, capfd, caplog):
    import tqdm

    import lm_eval.api.metrics
    from lifecycle.eval.harness import evaluate

    caplog.set_level(logging.INFO)
    level_before = logging.getLogger("lm_eval").level  # the CLI, run in-process by earlier tests, sets ERROR
    report = evaluate(tiny_model, tiny_tokenizer, ["copa", "lambada", "wikitext"], limit=3, max_length=64)
    out, err = capfd.readouterr()
    _no_leaks(out + err + caplog.text)
    assert "lm-eval: scoring copa, lambada, wikitext (3 items each)" in out + err
    # the results are lm-eval's, bootstrap included (its "bootstrapping" line was what leaked)
    assert set(report.scores) == {"copa", "lambada", "wikitext"} and "perplexity_stderr" in report.scores["lambada"]
    # nothing stays patched after the call
    assert tqdm.tqdm is tqdm.std.tqdm and "print" not in vars(lm_eval.api.metrics)
    assert logging.getLogger("lm_eval").level == level_before

    quiet = evaluate(tiny_model, tiny_tokenizer, ["copa"], limit=3, max_length=64, progress=False)
    out, err = capfd.readouterr()
    assert out + err == "" and quiet.scores["copa"] == report.scores["copa"]


def test_a_failing_evaluation_still_shows_what_lm_eval_said(tiny_model, tiny_tokenizer, monkeypatch, capfd, caplog):
    import lm_eval

    from lifecycle.eval.harness import evaluate

    def broken(**kwargs):
        import lm_eval.api.metrics

        lm_eval.api.metrics.print("lm-eval explains the failure")  # lm-eval's own print, silenced while it runs
        logging.getLogger("lm_eval.evaluator").error("an lm-eval error record")
        raise RuntimeError("boom")

    monkeypatch.setattr(lm_eval, "simple_evaluate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(tiny_model, tiny_tokenizer, ["copa"], limit=2, max_length=64)
    assert "lm-eval explains the failure" in capfd.readouterr().err
    assert "an lm-eval error record" in caplog.text


# -- loading, DeepSpeed ---------------------------------------------------------------------------------------


def test_loading_a_model_says_what_and_how_long(tiny_checkpoint, capsys):
    from lifecycle.model.io import load_model

    load_model(str(tiny_checkpoint))
    err = capsys.readouterr().err
    assert re.search(rf"loaded model {re.escape(str(tiny_checkpoint))} \(\d[\d.]*k parameters\), float32, in \d+\.\d s", err), err


def test_deepspeed_set_up_is_announced_before_it_may_compile():
    from lifecycle.train.runtime import prepare

    events: list[str] = []

    class Accelerator:
        state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3))

        def prepare(self, model, optimizer):
            events.append("prepare")  # where DeepSpeed builds (JIT-compiles) its ops
            return model, optimizer

    assert prepare(Accelerator(), "m", "o", say=events.append) == ("m", "o")
    assert events[1] == "prepare" and "ZeRO-3" in events[0] and "compiles" in events[0]
    assert events[2].startswith("DeepSpeed ready in ")

    events.clear()
    plain = Accelerator()
    plain.state = SimpleNamespace(deepspeed_plugin=None)
    prepare(plain, "m", "o", say=events.append)
    assert events == ["prepare"]  # nothing to say without DeepSpeed


# -- the summary every command ends with -----------------------------------------------------------------------


@pytest.fixture
def text_file(tmp_path, tiny_corpus):
    path = tmp_path / "text.txt"
    path.write_text(tiny_corpus.train[0][:20_000])
    return path


def test_train_ends_with_a_summary_and_leaves_only_what_resuming_needs(tiny_checkpoint, text_file, tmp_path, capfd):
    out = tmp_path / "out"
    code = _cli("train", "-m", str(tiny_checkpoint), "--data", str(text_file), "-o", str(out), "--steps", "3",
                "block_size=32", "train.micro_batch_size=4", "train.warmup_steps=1", "train.save_every=1",
                "train.eval_every=0", "eval.tasks=lambada", "eval.limit=3", "eval.max_length=64")
    stdout, stderr = capfd.readouterr()
    assert code == 0, stdout + stderr
    _no_leaks(stdout + stderr)
    lineage = json.loads((out / "lifecycle.json").read_text())
    summary = stdout[stdout.index(f"wrote {out}"):]
    assert summary.startswith(f"wrote {out.resolve()} (train continued-pretraining) in ")
    assert f"tokens seen    {lineage['metrics']['tokens_seen']:,}" in summary
    assert re.search(r"held-out loss  \d+\.\d{3} \(train \d+\.\d{3}\)", summary), summary
    assert re.search(r"scores         lambada perplexity \S+ ± \S+; lambada acc ", summary), summary
    assert "parameters" in summary and "on disk" in summary
    assert not re.search(r"\d{7,}\.\d", stdout), stdout  # no 2302318768.8970
    assert f"loaded model {tiny_checkpoint}" in stderr
    # tidy: the newest checkpoint (a longer train.steps resumes from it) and nothing else
    run = tmp_path / ".out.run"
    assert [p.name for p in run.iterdir()] == ["checkpoints"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]


def test_merge_ends_with_the_same_summary(tiny_checkpoint, tiny_tokenizer, tmp_path, capsys):
    from lifecycle.model.io import save_checkpoint

    other = save_checkpoint(make_tiny_model(len(tiny_tokenizer), seed=1), tiny_tokenizer, tmp_path / "other",
                            lineage={"command": "test"})
    config = tmp_path / "merge.yml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {tiny_checkpoint}\n    parameters: {{weight: 0.5}}\n"
                      f"  - model: {other}\n    parameters: {{weight: 0.5}}\n")
    out = tmp_path / "merged"
    assert _cli("merge", "--config", str(config), "-o", str(out)) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert f"wrote {out.resolve()} (merge " in stdout and "  parameters  " in stdout, stdout


def test_run_folder_tidy_keep_and_clean(tmp_path):
    from lifecycle.finish import tidy_run_dir

    def make(name: str) -> Path:
        run = tmp_path / name
        for step in (2, 4):
            (run / "stage" / "checkpoints" / f"step-{step}").mkdir(parents=True)
            (run / "stage" / "checkpoints" / f"step-{step}" / "trainer_state.json").write_text("{}")
        (run / "stage" / "checkpoints" / ".tmp-step-6").mkdir()
        (run / "stage" / "metrics.jsonl").write_text("{}\n")
        (run / "logs" / "lifecycle").mkdir(parents=True)
        (run / "logs" / "lifecycle" / "events.out").write_text("x")
        (run / "small-model").mkdir()
        (run / "continual_state.json").write_text("{}")
        return run

    def listing(run: Path) -> list[str]:
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())

    run = make("a")
    before = listing(run)
    tidy_run_dir(run, "keep", resumable=True)
    assert listing(run) == before
    tidy_run_dir(run, "tidy", resumable=True)
    assert listing(run) == ["logs/lifecycle/events.out", "stage/checkpoints/step-4/trainer_state.json"]
    tidy_run_dir(run, "tidy", resumable=False)
    assert listing(run) == ["logs/lifecycle/events.out"]
    tidy_run_dir(run, "clean", resumable=True)
    assert not run.exists()
    run = make("b")
    for logs in [run / "logs" / "lifecycle" / "events.out", run / "logs" / "lifecycle"]:
        logs.unlink() if logs.is_file() else logs.rmdir()
    tidy_run_dir(run, "tidy", resumable=False)
    assert not run.exists()  # nothing worth keeping: no folder


def test_keep_run_and_clean_are_flags_and_exclusive(tmp_path, capsys):
    from lifecycle.commands.train import TrainOptions

    assert TrainOptions(config="micro", output="o").run_folder == "tidy"
    assert _cli("train", "--config", "micro", "-o", str(tmp_path / "o"), "--keep-run", "--clean") == 2
    err = capsys.readouterr().err
    assert "--keep-run and --clean contradict each other" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


# -- ls and options --------------------------------------------------------------------------------------------


def test_ls_lists_every_command_with_its_methods_and_papers(capsys):
    from lifecycle.cli import app

    assert _cli("ls") == 0
    out = capsys.readouterr().out
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    rows = {line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")}
    assert commands <= rows, commands - rows
    for method in ("ties", "dare_ties", "slerp", "logit_moe", "lora_svd", "osft", "bitnet-b158", "gstack", "adapt"):
        assert f"│ {method} " in out, method
    assert "arXiv:2306.01708" in out and "lm-evaluation-harness" in out


def _cli_commands() -> list[str]:
    from lifecycle.cli import app

    return [c.name or c.callback.__name__ for c in app.registered_commands]


@pytest.mark.parametrize("command", _cli_commands())
def test_options_works_for_every_command(command, capsys):
    assert _cli("options", command) == 0
    out = capsys.readouterr().out
    assert out.strip() and "unknown command" not in out
    if command == "run":
        assert "steps:" in out and "command:" in out and "output_dir:" in out
    if command in ("train", "grow", "prune", "quantize", "continual", "merge", "vpretrain"):
        assert "run_folder: tidy" in out
