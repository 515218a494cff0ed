"""The method registry: one file adds a method, and the CLI, ``lifecycle options`` and recipes see it."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

from lifecycle.errors import LifecycleError
from lifecycle.methods.registry import _REGISTRY, canonical_name, methods_for

PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture
def dummy_method(monkeypatch):
    """The plugin registered in this process, and findable by child processes."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LIFECYCLE_PLUGINS", "dummy_prune")
    methods_for("prune")
    sys.modules.pop("dummy_prune", None)
    importlib.import_module("dummy_prune")
    yield
    _REGISTRY["prune"].pop("dummy", None)
    sys.modules.pop("dummy_prune", None)


def test_every_command_with_methods_registers_them():
    assert {"adapt", "taylor-uniform", "flap", "depth"} <= set(methods_for("prune"))
    assert {"gstack", "layerwise"} <= set(methods_for("grow"))
    assert all(m.paper for m in methods_for("prune").values())
    assert canonical_name("prune", "LLM-Pruner") == "taylor-uniform"
    with pytest.raises(LifecycleError, match="unknown prune method 'nope' .*known: adapt"):
        canonical_name("prune", "nope")


def test_method_groups_validate_only_for_their_method(dummy_method):
    from lifecycle.methods.prune.options import PruneOptions

    base = dict(model="m", output="o", ratio=0.3)
    opts = PruneOptions(**base, method="dummy", dummy={"drop_top": 2})
    assert opts.method_options.drop_top == 2
    assert opts.model_dump()["dummy"] == {"drop_top": 2}
    assert PruneOptions.model_validate(opts.model_dump()).method_options.drop_top == 2  # round trip
    assert PruneOptions(**base, method="dummy").method_options.drop_top == 1  # the group's defaults
    with pytest.raises(ValueError, match="option group 'dummy' belongs to method dummy, but method is adapt"):
        PruneOptions(**base, method="adapt", dummy={"drop_top": 2})
    with pytest.raises(ValueError, match="dummy.drop_tpo: unknown option"):
        PruneOptions(**base, method="dummy", dummy={"drop_tpo": 2})
    with pytest.raises(ValueError, match="known: adapt, depth, dummy, flap"):
        PruneOptions(**base, method="dumm")


def test_a_one_file_method_is_seen_by_cli_options_recipes_and_runs(dummy_method, cli_runner, tmp_path, tiny_checkpoint):
    code, out = cli_runner("ls")
    assert code == 0 and "dummy" in out and "drops the top layers" in out, out
    code, out = cli_runner("options", "prune")
    assert code == 0 and "dummy:  # options of method dummy only" in out and "  drop_top: 1" in out, out

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\noutput_dir: {tmp_path / 'runs'}\nsteps:\n"
                      f"  - name: cut\n    command: prune\n    model: {tiny_checkpoint}\n    method: dummy\n"
                      f"    ratio: 0.2\n    dummy: {{drop_top: 1}}\n    calib_samples: 2\n    calib_length: 16\n")
    code, out = cli_runner("run", str(recipe), "--dry-run")
    assert code == 0 and "cut" in out, out
    code, out = cli_runner("run", str(recipe), "--dry-run", "cut.dummy.drop_tpo=1")
    assert code != 0 and "dummy.drop_tpo: unknown option" in out, out

    code, out = cli_runner("run", str(recipe))
    assert code == 0, out
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "cut")
    assert model.config.num_hidden_layers == AutoModelForCausalLM.from_pretrained(tiny_checkpoint).config.num_hidden_layers - 1
