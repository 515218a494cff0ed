"""Lineage and model cards: what a checkpoint says about where it came from and how it scores.

The card's front matter is what the Hub indexes (base_model graph, model-index leaderboard), so it is
checked with huggingface_hub's own parser rather than by string matching.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard

from lifecycle.model import card as card_mod
from lifecycle.model.card import LINEAGE_FILE, new_lineage, read_lineage, record_eval, render_model_card, write_model_card

BASE = "HuggingFaceTB/SmolLM2-135M"


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    _, front, _ = text.split("---", 2)
    data = yaml.safe_load(front)
    assert isinstance(data, dict)
    return data


def _chain() -> tuple[dict, dict, dict]:
    """base (Hub) -> train -> grow -> prune, each stage built from its parent's lineage."""
    train = new_lineage(command="train", method="full", parents=[BASE], options={"lr": 1e-4}, relation="finetune", seed=1)
    grow = new_lineage(
        command="grow", method="depth_upscale", parents=["/runs/smoke/train"], parent_lineages=[train], options={"layers": 4}
    )
    prune = new_lineage(
        command="prune", method="magnitude", parents=["/runs/smoke/grow"], parent_lineages=[grow], options={"sparsity": 0.5}
    )
    return train, grow, prune


def test_lineage_history_newest_first_and_base_inherited():
    train, grow, prune = _chain()
    assert train["base_model"] == BASE and train["history"] == []
    assert grow["base_model"] == BASE and prune["base_model"] == BASE
    assert [h["command"] for h in prune["history"]] == ["grow", "train"]
    assert all("history" not in h for h in prune["history"])  # flattened, not nested
    assert prune["parents"] == ["/runs/smoke/grow"]
    assert prune["eval"] == {} and "python" in prune["versions"] and "torch" in prune["versions"]
    # The recipe hash follows the options, and only them.
    again = new_lineage(command="prune", options={"sparsity": 0.5})
    assert again["recipe_hash"] == prune["recipe_hash"]
    assert new_lineage(command="prune", options={"sparsity": 0.6})["recipe_hash"] != prune["recipe_hash"]


def test_lineage_of_a_merge_keeps_both_parents_history():
    train, grow, _ = _chain()
    other = new_lineage(command="train", parents=["Org/other-model"], options={})
    merged = new_lineage(command="merge", method="linear", parents=["/a", "/b"], parent_lineages=[grow, other], relation="merge")
    assert [h["command"] for h in merged["history"]] == ["grow", "train", "train"]
    assert merged["history"][2]["parents"] == ["Org/other-model"]
    assert merged["base_model"] == BASE  # the first parent that knows its base


def test_local_parent_is_recorded_as_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "base").mkdir(parents=True)
    lineage = new_lineage(command="prune", parents=["runs/base"])  # looks like a Hub id, but is a folder here
    assert lineage["parents"] == [str((tmp_path / "runs" / "base").resolve())]
    assert "base_model" not in _front(render_model_card(lineage))


def test_card_front_matter_is_valid_for_the_hub():
    _, _, prune = _chain()
    prune["base_model_relation"] = "finetune"
    prune["eval"] = {
        "lc_mc": {"acc,none": 0.61, "acc_stderr,none": 0.02, "acc_norm,none": 0.64, "alias": "lc_mc"},
        "lc_ppl": {"word_perplexity,none": 41.5, "bits_per_byte,none": float("nan"), "bits_per_byte_stderr,none": "N/A"},
        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.01},
        "flag": {"passed": True},
    }
    text = render_model_card(prune)
    front = _front(text)
    assert front["library_name"] == "transformers"
    assert front["tags"] == ["lifecycle", "lifecycle-prune", "magnitude"]

    parsed = ModelCard(text)
    data = parsed.data
    assert data.base_model == BASE and data.to_dict()["base_model_relation"] == "finetune"
    assert data.model_name  # required by the Hub whenever eval_results are present
    scores = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert scores == {
        ("lc_mc", "acc"): 0.61,
        ("lc_mc", "acc_norm"): 0.64,
        ("lc_ppl", "word_perplexity"): 41.5,
        ("gsm8k", "exact_match"): 0.25,
    }  # no stderr, no NaN, no booleans, no strings
    names = {r.metric_name for r in data.eval_results}
    assert "gsm8k exact_match (strict-match)" in names and "lc_mc acc" in names
    assert all(r.task_type == "text-generation" for r in data.eval_results)
    # The body pairs each score with its stderr and shows the lineage.
    assert "0.6100 ± 0.0200" in text and "| lc_ppl | bits_per_byte,none | nan |" in text
    assert "ancestor 1" in text and "ancestor 2" in text
    assert "sparsity: 0.5" in text


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (BASE, True),
        ("Org/model.v1-2", True),
        ("/abs/path/model", False),
        ("./runs/model", False),
        ("~/models/x", False),
        ("runs/grow/final", False),
        ("gpt2", False),
        ("a/../b", False),
        ("org/name.", False),
        (None, False),
    ],
)
def test_base_model_only_for_hub_ids(base, expected):
    lineage = {"command": "train", "base_model": base, "base_model_relation": "finetune"}
    front = _front(render_model_card(lineage))
    assert ("base_model" in front) is expected
    assert ("base_model_relation" in front) is expected
    if base:
        assert str(base) in render_model_card(lineage)  # always kept in the body


def test_relation_outside_hub_vocabulary_is_dropped():
    front = _front(render_model_card({"command": "grow", "base_model": BASE, "base_model_relation": "grow"}))
    assert front["base_model"] == BASE and "base_model_relation" not in front


def test_merge_card_lists_every_hub_model_it_came_from():
    """The Hub's model tree takes a list of base models for a merge: the Hub parents, and for local
    parents the Hub models they descend from; one base stays a string, local paths stay out."""
    train, grow, _ = _chain()  # grow descends from BASE through a local folder
    other = new_lineage(command="train", parents=["Org/other-model"], options={}, relation="finetune")
    local = new_lineage(command="merge", method="linear", parents=["/runs/a", "/runs/b"], parent_lineages=[grow, other],
                        relation="merge")
    local["eval"] = {"lc_mc": {"acc,none": 0.5}}
    text = render_model_card(local)
    data = ModelCard(text).data
    assert data.base_model == [BASE, "Org/other-model"] and data.to_dict()["base_model_relation"] == "merge"
    assert [r.metric_value for r in data.eval_results] == [0.5]  # model-index beside it
    hub = new_lineage(command="merge", parents=["Org/a", "Org/b"], relation="merge")
    assert _front(render_model_card(hub))["base_model"] == ["Org/a", "Org/b"]
    one = new_lineage(command="merge", parents=["/runs/a", "/runs/b"], parent_lineages=[train, train], relation="merge")
    assert _front(render_model_card(one))["base_model"] == BASE
    assert "base_model" not in _front(render_model_card(new_lineage(command="merge", parents=["/x", "/y"], relation="merge")))


def test_options_that_yaml_cannot_represent_still_render(tmp_path):
    lineage = new_lineage(command="train", options={"output": tmp_path / "out", "lr": np.float32(0.5), "steps": (1, 2)})
    text = render_model_card(lineage)
    assert f"output: {tmp_path / 'out'}" in text and "lr: 0.5" in text
    write_model_card(tmp_path, lineage)
    assert (tmp_path / "README.md").read_text() == text


def _checkpoint(folder: Path) -> Path:
    folder.mkdir()
    _, _, lineage = _chain()
    (folder / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2))
    write_model_card(folder, lineage)
    return folder


def test_record_eval_merges_scores_and_rerenders(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    record_eval(folder, {"lc_mc": {"acc,none": np.float64(0.5), "acc_stderr,none": 0.05}})
    record_eval(folder, {"lc_ppl": {"word_perplexity,none": 40.0}}, settings={"limit": 200, "tasks_dir": Path("/t")})
    record_eval(folder, {"lc_mc": {"acc,none": 0.75}})  # re-evaluated: replaces that task's numbers

    lineage = read_lineage(folder)
    assert lineage["eval"] == {"lc_mc": {"acc,none": 0.75}, "lc_ppl": {"word_perplexity,none": 40.0}}
    # each run keeps its own settings; the headline settings say which applies to which task
    assert [r["limit"] for r in lineage["eval_records"]] == [None, 200, None]
    assert lineage["eval_records"][1]["tasks_dir"] == "/t" and "tasks_dir" not in lineage["eval_records"][2]
    assert lineage["eval_settings"]["limit"] == {"lc_mc": None, "lc_ppl": 200}
    assert lineage["eval_settings"]["tasks_dir"] == {"lc_mc": None, "lc_ppl": "/t"}
    assert lineage["command"] == "prune" and len(lineage["history"]) == 2  # the rest is untouched
    text = (folder / "README.md").read_text()
    assert text == render_model_card(lineage)  # card and lineage agree
    scores = {(r.dataset_name, r.metric_type): r.metric_value for r in ModelCard(text).data.eval_results}
    assert scores == {("lc_mc", "acc"): 0.75, ("lc_ppl", "word_perplexity"): 40.0}
    assert sorted(os.listdir(folder)) == ["README.md", LINEAGE_FILE]  # no temp files left behind


def test_record_eval_leaves_both_files_alone_when_rendering_fails(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path / "ckpt")
    before = {name: (folder / name).read_text() for name in ("README.md", LINEAGE_FILE)}

    def broken(lineage: dict) -> str:
        raise RuntimeError("render failed")

    monkeypatch.setattr(card_mod, "render_model_card", broken)
    with pytest.raises(RuntimeError):
        record_eval(folder, {"lc_mc": {"acc,none": 0.5}})
    assert {name: (folder / name).read_text() for name in before} == before
    assert sorted(os.listdir(folder)) == ["README.md", LINEAGE_FILE]


def test_record_eval_on_a_folder_without_lineage(tmp_path):
    record_eval(tmp_path, {"lc_mc": {"acc,none": 0.5}})
    assert read_lineage(tmp_path)["eval"] == {"lc_mc": {"acc,none": 0.5}}
    assert ModelCard((tmp_path / "README.md").read_text()).data.eval_results[0].metric_value == 0.5


# --- file modes --------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_rewritten_card_and_lineage_keep_their_mode(tmp_path):
    """mkstemp makes 0600 files; a rewrite must keep the replaced file's mode, not publish a private card."""
    folder = _checkpoint(tmp_path / "ckpt")
    (folder / "README.md").chmod(0o664)
    (folder / LINEAGE_FILE).chmod(0o640)
    record_eval(folder, {"lc_mc": {"acc,none": 0.5}})
    assert _mode(folder / "README.md") == 0o664 and _mode(folder / LINEAGE_FILE) == 0o640


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_new_card_files_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_model_card(tmp_path, {"command": "train"})
        record_eval(tmp_path, {"lc_mc": {"acc,none": 0.5}})  # creates lifecycle.json
        with open(tmp_path / "plain", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    expected = _mode(tmp_path / "plain")
    assert expected == 0o666 & ~umask
    assert _mode(tmp_path / "README.md") == expected and _mode(tmp_path / LINEAGE_FILE) == expected


# --- eval records and the headline -------------------------------------------------------------


def _settings(n: dict, **extra) -> dict:
    limit = extra.pop("limit", max(n.values()))
    return {"tasks": list(n), "limit": limit, "n_samples": n, "num_fewshot": None, "batch_size": 8,
            "max_length": 1024, "lm_eval_version": "0.4.13", **extra}


def _card_rows(text: str, task: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith(f"| {task} |")]


def test_spot_check_does_not_replace_a_larger_runs_headline():
    lineage = new_lineage(command="train")
    full = card_mod.add_eval_record(lineage, {"copa": {"acc": 0.60, "acc_stderr": 0.05}}, _settings({"copa": 100}), date="2026-01-01T00:00:00Z")
    spot = card_mod.add_eval_record(full, {"copa": {"acc": 1.0}}, _settings({"copa": 3}), date="2026-01-02T00:00:00Z")
    assert lineage.get("eval_records") is None and len(full["eval_records"]) == 1  # inputs are not modified
    assert spot["eval"] == {"copa": {"acc": 0.60, "acc_stderr": 0.05}}
    assert spot["eval_settings"]["limit"] == 100 and spot["eval_settings"]["n_samples"] == {"copa": 100}
    # every run is kept with its own settings
    assert [(r["limit"], r["n_samples"], r["date"], r["scores"]["copa"]["acc"]) for r in spot["eval_records"]] == [
        (100, {"copa": 100}, "2026-01-01T00:00:00Z", 0.60), (3, {"copa": 3}, "2026-01-02T00:00:00Z", 1.0)]
    for record in spot["eval_records"]:
        assert set(card_mod.EVAL_RECORD_FIELDS) <= set(record)
    text = render_model_card(spot)
    scores = {(r.dataset_name, r.metric_type): r.metric_value for r in ModelCard(text).data.eval_results}
    assert scores == {("copa", "acc"): 0.60}
    assert _card_rows(text, "copa") == [["copa", "acc", "0.6000 ± 0.0500", "100", "2026-01-01T00:00:00Z"]]
    assert "| 2026-01-02T00:00:00Z | copa 3 | 3 |" in text  # the spot check is listed, not headlined

    # same number of items: the newer run wins; more items: the larger run wins
    again = card_mod.add_eval_record(spot, {"copa": {"acc": 0.62}}, _settings({"copa": 100}), date="2026-01-03T00:00:00Z")
    assert again["eval"]["copa"] == {"acc": 0.62}
    bigger = card_mod.add_eval_record(again, {"copa": {"acc": 0.58}}, _settings({"copa": 200}))
    assert bigger["eval"]["copa"] == {"acc": 0.58} and bigger["eval_settings"]["limit"] == 200


def test_replace_makes_a_smaller_run_the_headline():
    lineage = card_mod.add_eval_record({}, {"copa": {"acc": 0.6}}, _settings({"copa": 100}))
    replaced = card_mod.add_eval_record(lineage, {"copa": {"acc": 0.9}}, _settings({"copa": 3}), replace=True)
    assert replaced["eval"]["copa"] == {"acc": 0.9} and replaced["eval_records"][-1]["replace"] is True
    assert "(replace)" in render_model_card(replaced)
    # after a replace, runs compete with the replacing one again
    small = card_mod.add_eval_record(replaced, {"copa": {"acc": 0.1}}, _settings({"copa": 2}))
    assert small["eval"]["copa"] == {"acc": 0.9}
    more = card_mod.add_eval_record(small, {"copa": {"acc": 0.5}}, _settings({"copa": 10}))
    assert more["eval"]["copa"] == {"acc": 0.5}


def test_each_task_takes_its_own_headline_with_its_own_settings():
    lineage = card_mod.add_eval_record({}, {"copa": {"acc": 0.6}, "boolq": {"acc": 0.7}}, _settings({"copa": 100, "boolq": 100}),
                                       date="2026-01-01T00:00:00Z")
    lineage = card_mod.add_eval_record(lineage, {"copa": {"acc": 0.9}, "lambada": {"perplexity": 40.0}},
                                       _settings({"copa": 5, "lambada": 5}, max_length=64), date="2026-01-02T00:00:00Z")
    assert lineage["eval"] == {"copa": {"acc": 0.6}, "boolq": {"acc": 0.7}, "lambada": {"perplexity": 40.0}}
    settings = lineage["eval_settings"]
    assert settings["tasks"] == ["copa", "boolq", "lambada"]
    assert settings["n_samples"] == {"copa": 100, "boolq": 100, "lambada": 5}
    assert settings["max_length"] == {"copa": 1024, "boolq": 1024, "lambada": 64}  # differs: per task
    assert settings["batch_size"] == 8  # agrees: one value
    text = render_model_card(lineage)
    assert _card_rows(text, "copa") == [["copa", "acc", "0.6000", "100", "2026-01-01T00:00:00Z"]]
    assert _card_rows(text, "lambada") == [["lambada", "perplexity", "40.000", "5", "2026-01-02T00:00:00Z"]]


def test_old_eval_keys_render_and_become_records():
    """finish_run (and lineages written before records) set only eval / eval_settings."""
    old = new_lineage(command="train")
    old["eval"] = {"copa": {"acc": 0.6}, "boolq": {"acc": 0.7}}
    old["eval_settings"] = _settings({"copa": 100})  # the last run covered copa only
    text = render_model_card(old)
    assert _card_rows(text, "copa") == [["copa", "acc", "0.6000", "100", "-"]]
    assert _card_rows(text, "boolq") == [["boolq", "acc", "0.7000", "-", "-"]]
    assert "Settings: `" in text
    assert {(r.dataset_name, r.metric_value) for r in ModelCard(text).data.eval_results} == {("copa", 0.6), ("boolq", 0.7)}

    new = card_mod.add_eval_record(old, {"copa": {"acc": 1.0}, "boolq": {"acc": 0.1}}, _settings({"copa": 3, "boolq": 3}))
    assert new["eval"] == {"copa": {"acc": 0.6}, "boolq": {"acc": 0.1}}  # boolq had no known count: a counted run wins
    legacy = [r for r in new["eval_records"] if r.get("legacy")]
    assert [sorted(r["scores"]) for r in legacy] == [["boolq"], ["copa"]]
    assert legacy[1]["limit"] == 100 and legacy[0]["limit"] is None  # the old settings only go with the tasks they name


def test_record_eval_writes_extra_files_from_the_new_lineage(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    lineage = record_eval(folder, {"copa": {"acc": 0.5}}, _settings({"copa": 4}),
                          extra=lambda lin: {"eval_results.json": json.dumps({"scores": lin["eval"]})})
    assert json.loads((folder / "eval_results.json").read_text()) == {"scores": lineage["eval"]} == {"scores": read_lineage(folder)["eval"]}
