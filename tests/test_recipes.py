"""Recipes: every shipped recipe validates; chaining, overrides, skip-on-rerun and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.errors import LifecycleError
from lifecycle.recipe import STATE_FILE, plan_recipe, run_recipe

from conftest import REPO_ROOT

SHIPPED = sorted(p for p in (REPO_ROOT / "recipes").glob("*.yaml"))


def test_there_are_shipped_recipes():
    assert any(p.name == "quickstart.yaml" for p in SHIPPED)


@pytest.mark.parametrize("recipe", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe, tmp_path):
    _, steps, _ = plan_recipe(recipe, [f"output_dir={tmp_path}"])
    assert steps


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


CHAIN = """
name: chain
output_dir: {out}
steps:
  - name: base
    command: train
    config: micro
    data: shakespeare
    block_size: 32
    max_train_tokens: 20000
    train: {{steps: 3, eval_every: 0, micro_batch_size: 4}}
  - name: more
    command: train
    data: wikitext
    block_size: 32
    max_train_tokens: 20000
    train: {{steps: 2, eval_every: 0, micro_batch_size: 4}}
"""


def test_chain_uses_previous_output_and_skips_on_rerun(tmp_path):
    recipe = _write(tmp_path, CHAIN.format(out=tmp_path / "runs"))
    outputs = run_recipe(recipe)
    assert [p.name for p in outputs] == ["base", "more"]
    lineage = json.loads((outputs[1] / "lifecycle.json").read_text())
    assert lineage["parents"] == [str(outputs[0])]
    assert lineage["history"][0]["command"] == "train"
    stamp = (outputs[1] / "model.safetensors").stat().st_mtime_ns
    run_recipe(recipe)  # nothing changed: both steps skipped
    assert (outputs[1] / "model.safetensors").stat().st_mtime_ns == stamp
    run_recipe(recipe, ["more.train.steps=3"])  # only the second step's key changed
    assert (outputs[1] / "model.safetensors").stat().st_mtime_ns != stamp
    state = json.loads((tmp_path / "runs" / STATE_FILE).read_text())
    assert set(state) == {"base", "more"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsteps:\n  - {name: a, command: explode}\n", "step 'a': unknown command 'explode'"),
        ("name: x\nsteps:\n  - {name: a, command: train, config: micro, trian: {}}\n", "step 'a': trian: unknown option"),
        ("name: x\nsteps:\n  - {name: a, command: train, config: micro, train: {steps: -1}}\n", "step 'a': train.steps"),
        ("name: x\nsteps:\n  - {name: a, command: train, model: previous}\n", "no earlier step produces a model"),
        ("name: x\nsteps:\n  - {name: a, command: train, model: steps.zz}\n", "names no earlier step"),
        ("name: x\nstpes: []\n", "stpes: unknown option"),
        ("name: x\nsteps: [\n", "not valid YAML"),
    ],
)
def test_invalid_recipes_name_step_and_field(tmp_path, text, message):
    with pytest.raises(LifecycleError, match=message.replace("(", r"\(")):
        plan_recipe(_write(tmp_path, text))


def test_bad_step_is_caught_before_anything_runs(tmp_path):
    text = CHAIN.format(out=tmp_path / "runs") + "  - {name: broken, command: train, bogus: 1}\n"
    with pytest.raises(LifecycleError, match="step 'broken'"):
        run_recipe(_write(tmp_path, text))
    assert not (tmp_path / "runs").exists()


def test_unknown_override_is_an_error(tmp_path):
    with pytest.raises(LifecycleError, match="matches no step option"):
        plan_recipe(_write(tmp_path, CHAIN.format(out=tmp_path)), ["nonsense=1"])


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, capsys):
    run_recipe(_write(tmp_path, CHAIN.format(out=tmp_path / "runs")), dry_run=True)
    out = capsys.readouterr().out
    assert "base" in out and "more" in out and "M" in out  # a parameter count like 0.15M
    assert not (tmp_path / "runs").exists()


def test_step_built_from_a_config_takes_no_previous_model(tmp_path):
    text = CHAIN.format(out=tmp_path / "runs") + (
        "  - {name: fresh, command: train, config: micro, data: shakespeare, block_size: 32,"
        " max_train_tokens: 20000, train: {steps: 1}}\n"
    )
    _, steps, _ = plan_recipe(_write(tmp_path, text))
    assert steps[-1].model_ref is None


@pytest.fixture
def stub_commands():
    """Two in-memory commands: one that makes a 'model' folder, one that takes several (like merge)."""
    from pydantic import Field

    from lifecycle.commands import COMMANDS, load_all, register
    from lifecycle.options import CommandOptions

    load_all()
    calls: list[list[str]] = []

    class MakeOptions(CommandOptions):
        output: str
        overwrite: bool = False
        tag: str = "x"

    class CombineOptions(CommandOptions):
        models: list[str] = Field(..., min_length=2)
        output: str
        overwrite: bool = False

    def _write_folder(path: str, payload: dict) -> Path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(payload))
        return out

    register("stub_make", MakeOptions, help="test", model_field=None)(lambda o: _write_folder(o.output, {"tag": o.tag}))

    def combine(o):
        calls.append(list(o.models))
        return _write_folder(o.output, {"parents": o.models})

    register("stub_combine", CombineOptions, help="test", model_field=None, models_field="models")(combine)
    yield calls
    COMMANDS.pop("stub_make", None)
    COMMANDS.pop("stub_combine", None)


def test_a_step_takes_several_earlier_steps_as_models(tmp_path, stub_commands):
    recipe = _write(tmp_path, f"""
name: multi
output_dir: {tmp_path / 'runs'}
steps:
  - {{name: a, command: stub_make, tag: a}}
  - {{name: b, command: stub_make, tag: b}}
  - {{name: both, command: stub_combine, models: [steps.a, b, {tmp_path / 'elsewhere'}]}}
""")
    run_recipe(recipe)
    runs = tmp_path / "runs"
    assert stub_commands == [[str(runs / "a"), str(runs / "b"), str(tmp_path / "elsewhere")]]
    run_recipe(recipe)  # unchanged inputs: skipped
    assert len(stub_commands) == 1
    (runs / "b" / "config.json").write_text(json.dumps({"tag": "changed"}))
    run_recipe(recipe, ["a.tag=a"])  # an input model changed: the combining step runs again
    assert len(stub_commands) == 2

    bad = _write(tmp_path, f"name: m\noutput_dir: {tmp_path}\nsteps:\n"
                           "  - {name: both, command: stub_combine, models: [steps.nope, x]}\n")
    with pytest.raises(LifecycleError, match="models: steps.nope names no earlier step"):
        plan_recipe(bad)


def test_eval_steps_skip_on_rerun_and_dry_run_status_is_right(tmp_path, capsys):
    """An eval step writes scores into its input's card; that must not make it (or its input) look new."""
    text = CHAIN.format(out=tmp_path / "runs").split("  - name: more")[0] + (
        "  - {name: score, command: eval, tasks: copa, limit: 4, bootstrap_iters: 0}\n")
    recipe = _write(tmp_path, text)
    run_recipe(recipe)
    state = json.loads((tmp_path / "runs" / STATE_FILE).read_text())
    assert set(state) == {"base", "score"}
    capsys.readouterr()
    run_recipe(recipe, dry_run=True)
    plan = capsys.readouterr().out
    assert plan.count("done (skip)") == 2, plan
    run_recipe(recipe)
    assert "skip score" in capsys.readouterr().out
    # A changed upstream step makes the eval step run again, in the plan as in the run.
    run_recipe(recipe, ["base.train.steps=2"], dry_run=True)
    plan = capsys.readouterr().out
    assert plan.count("to run") == 2 and "done (skip)" not in plan, plan


def test_interrupted_training_step_resumes_on_rerun(tmp_path, monkeypatch):
    """A training step stopped by a signal is recorded; the next run passes resume to that step."""
    from lifecycle.commands import load_all
    from lifecycle.errors import TrainingInterrupted

    train_cmd = load_all()["train"]
    seen: list[bool] = []
    real_run = train_cmd.run

    def flaky(opts):
        seen.append(opts.resume)
        if len(seen) == 1:
            raise TrainingInterrupted(2, 2, None)
        return real_run(opts)

    import dataclasses

    from lifecycle import commands

    monkeypatch.setitem(commands.COMMANDS, "train", dataclasses.replace(train_cmd, run=flaky))
    recipe = _write(tmp_path, CHAIN.format(out=tmp_path / "runs").split("  - name: more")[0])
    with pytest.raises(TrainingInterrupted, match="run the recipe again to resume step 'base'"):
        run_recipe(recipe)
    state = json.loads((tmp_path / "runs" / STATE_FILE).read_text())
    assert state["base"]["interrupted"] is True
    run_recipe(recipe)
    assert seen == [False, True]
