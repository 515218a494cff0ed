"""lifecycle report: one self-contained HTML page of a model's life, from real tiny checkpoints.

One recipe run (seconds on micro models) makes the chain train → prune → quantize plus a second
expert and a linear merge of the two; the tests report on the run, on one checkpoint, on a checkpoint
whose ancestors' folders are gone, and on bad inputs. The browser test renders the page in headless
Chromium (skipped where no chromium binary is installed; CI installs one, see .ci/run).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import cli_env

TRAIN = "block_size: 32\n    max_train_tokens: 20000\n    train: {steps: 4, eval_every: 2, log_every: 1, micro_batch_size: 4}"
RECIPE = """
name: life
output_dir: OUT
steps:
  - name: base
    command: train
    config: micro
    data: shakespeare
    tokenizer: bpe:512
    TRAIN
  - name: pruned
    command: prune
    method: adapt
    ratio: 0.3
    data: shakespeare
    calib_samples: 4
    calib_length: 32
    TRAIN
  - name: ternary
    command: quantize
    method: bitnet-b158
    data: shakespeare
    TRAIN
  - name: expert
    command: train
    model: steps.base
    data: wikitext
    TRAIN
  - name: merged
    command: merge
    merge_method: linear
    models: [steps.base, steps.expert]
    parameters: {weight: 0.5}
    dtype: float32
"""

SECTIONS = ("lineage", "steps", "curves", "pruning", "quantization", "merges")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_torch_thread) -> Path:
    from lifecycle.recipe import run_recipe

    root = tmp_path_factory.mktemp("report")
    recipe = root / "life.yaml"
    recipe.write_text(RECIPE.replace("TRAIN", TRAIN).replace("OUT", str(root / "runs" / "life")))
    run_recipe(recipe)
    return root / "runs" / "life"


def _report(source: Path, out: Path, **kw) -> str:
    from lifecycle.report import write_report

    write_report(source, out, **kw)
    return out.read_text()


def _sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="([\w-]+)"', page))


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _self_contained(page: str) -> None:
    assert not re.search(r"https?://", page), "the page must not reference anything on the network"
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(?:src|href)="(?!data:|#)', page), "every resource is inline"


def test_commands_record_what_the_report_draws(run_dir):
    """Curves, the pruning plan and the bit budget live in the lineage, so descendants carry them."""
    pruned = json.loads((run_dir / "pruned" / "lifecycle.json").read_text())
    plan = pruned["prune_plan"]
    assert plan["before"]["intermediate_size"] == [64, 64] and len(plan["after"]["intermediate_size"]) == 2
    assert sum(plan["after"]["intermediate_size"]) < 128
    ternary = json.loads((run_dir / "ternary" / "lifecycle.json").read_text())
    budget = {row["part"].split(" ")[0]: row for row in ternary["metrics"]["bit_budget"]}
    assert budget["quantized"]["bits"] == 1.58 and budget["quantized"]["stored_bits"] == 2
    assert budget["full"]["bits"] == 32 and budget["quantized"]["params"] + budget["full"]["params"] > 0
    curve = ternary["curve"]
    assert curve["step"] == [1, 2, 3, 4] and curve["val_loss"][1] is not None and curve["train_loss"][0] is not None
    entry = next(h for h in ternary["history"] if h["command"] == "prune")
    assert entry["prune_plan"] == plan and entry["curve"]  # embedded with the ancestor


def test_a_recipe_run_ends_with_one_row_per_step(run_dir):
    from rich.console import Console

    from lifecycle.recipe import print_run_table

    console = Console(record=True, width=250)
    print_run_table(run_dir, console)
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith("│")]
    names = [row.split("│")[1].strip() for row in rows]
    assert names == ["base", "pruned", "ternary", "expert", "merged"], names
    assert "held-out loss" in text and "Δ held-out" in text and "tokens seen" in text


def test_compact_curve_thins_train_rows_and_keeps_every_evaluation():
    from lifecycle.finish import compact_curve

    rows = [{"step": i, "tokens": 10 * i, "train_loss": 5.0 - i / 1000, **({"val_loss": 4.123456789} if i % 100 == 0 else {})}
            for i in range(1, 1001)]
    curve = compact_curve(rows, points=50)
    assert len([v for v in curve["train_loss"] if v is not None]) <= 51
    assert curve["step"][-1] == 1000 and [s for s, v in zip(curve["step"], curve["val_loss"]) if v] == list(range(100, 1001, 100))
    assert curve["val_loss"][-1] == 4.1235  # 5 significant digits


def test_run_report_has_every_section_that_applies(run_dir, tmp_path):
    page = _report(run_dir, tmp_path / "r.html")
    assert _sections(page) == set(SECTIONS)  # no continual step: no accuracy matrix
    _self_contained(page)
    table = page.split('id="score-table"', 1)[1].split("</table>", 1)[0]
    for name in ("base", "pruned", "ternary", "expert", "merged"):
        assert f"<td>{name}</td>" in table
    assert "quantize-bitnet-b158" in table and "prune-adapt" in table
    # at most 4 significant digits after the point, and no 2302318768.897: numbers are printed readably
    assert not re.search(r"\d{5,}\.\d|\.0*[1-9]\d{4,}", table), table
    images = _images(page)
    assert images and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    # lineage graph + 4 curves (base, pruned, ternary, expert; a merge trains nothing) + plan + bits + weights
    assert len(images) == 1 + 4 + 3


def test_checkpoint_report_covers_its_ancestors_only(run_dir, tmp_path):
    page = _report(run_dir / "ternary", tmp_path / "t.html")
    assert _sections(page) == {"lineage", "steps", "curves", "pruning", "quantization"}
    table = page.split('id="score-table"', 1)[1].split("</table>", 1)[0]
    assert [n for n in ("base", "pruned", "ternary", "expert", "merged") if f"<td>{n}</td>" in table] == ["base", "pruned", "ternary"]
    assert "lifecycle report: ternary" in page
    from lifecycle.report import collect

    assert all(s.seconds is not None for s in collect(run_dir / "ternary").steps)  # from the run's state file


def test_merge_report_shows_both_parents_and_their_weights(run_dir, tmp_path):
    from lifecycle.report import collect

    lineage = collect(run_dir / "merged")
    merged = lineage.step(lineage.targets[0])
    assert [lineage.step(p).name for p in merged.parents] == ["base", "expert"]
    assert [s.name for s in lineage.steps] == ["base", "expert", "merged"]  # one base, parents first
    page = _report(run_dir / "merged", tmp_path / "m.html")
    assert {"merges", "lineage", "steps"} <= _sections(page) and "pruning" not in _sections(page)
    merges = page.split('<section id="merges">', 1)[1]
    assert merges.count("<td>0.5</td>") == 2 and "<td>base</td>" in merges and "<td>expert</td>" in merges


def test_ancestors_whose_folders_are_gone_come_from_the_embedded_history(run_dir, tmp_path):
    """A checkpoint copied elsewhere, its ancestors' folders gone: the card still carries them."""
    moved = tmp_path / "ternary"
    shutil.copytree(run_dir / "ternary", moved)
    card = moved / "lifecycle.json"
    card.write_text(card.read_text().replace(str(run_dir), "/nonexistent/runs/life"))
    from lifecycle.report import collect

    lineage = collect(moved)
    assert [(s.name, s.kind) for s in lineage.steps] == [("base", "embedded"), ("pruned", "embedded"), ("ternary", "folder")]
    page = _report(moved, tmp_path / "g.html")
    assert {"curves", "pruning", "quantization"} <= _sections(page)
    assert len(_images(page)) == 1 + 3 + 2  # graph, three curves, plan, bits: all from the card alone


def test_png_writes_the_same_figures_and_bad_input_writes_nothing(run_dir, tmp_path, cli_runner):
    out, pngs = tmp_path / "cli.html", tmp_path / "figs"
    code, output = cli_runner("report", str(run_dir), "-o", str(out), "--png", str(pngs))
    assert code == 0, output
    files = sorted(p.name for p in pngs.glob("*.png"))
    assert "lineage.png" in files and "loss-base.png" in files and "prune-pruned.png" in files
    assert "bits-ternary.png" in files and "merge-merged.png" in files
    assert sorted((pngs / f).read_bytes() for f in files) == sorted(_images(out.read_text()))

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    for source, extra, message in [
        (tmp_path / "missing", [], "no such file or folder"),
        (tmp_path / "empty", [], "no lifecycle.json"),
        (tmp_path / "afile", [], "is a file"),
        (run_dir, ["-o", str(tmp_path)], "is a folder"),
    ]:
        target = tmp_path / "bad.html"
        code, output = cli_runner("report", str(source), *(extra or ["-o", str(target)]), "--png", str(tmp_path / "badpng"))
        lines = [line for line in output.splitlines() if line.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], output
        assert not target.exists() and not (tmp_path / "badpng").exists()


def test_continual_card_gets_its_accuracy_heatmap_and_scores_their_columns(tmp_path):
    """The keys `lifecycle continual` writes into metrics (see lifecycle/commands/continual.py)."""
    folder = tmp_path / "cl"
    folder.mkdir()
    lineage = {"command": "continual", "method": "continual-osft", "parents": ["smollm2"], "history": [],
               "metrics": {"method": "osft", "tasks": ["copa", "rte"], "accuracy_matrix": [[0.7, 0.5], [0.6, 0.8]],
                           "zero_shot": [0.5, 0.5], "AA": 0.7, "BWT": -0.1, "FWT": 0.0, "forgetting": 0.1},
               "eval": {"lc_mc": {"acc,none": 0.6123456, "acc_stderr,none": 0.01, "alias": "lc_mc"}}}
    (folder / "lifecycle.json").write_text(json.dumps(lineage))
    page = _report(folder, tmp_path / "c.html")
    assert _sections(page) == {"lineage", "steps", "continual"}
    continual = page.split('<section id="continual">', 1)[1]
    assert "before (zero-shot)" in continual and "after rte" in continual and "BWT" in continual
    assert "smollm2" in page  # the external parent is a node of the graph
    table = page.split('id="score-table"', 1)[1].split("</table>", 1)[0]
    assert "<th>lc_mc acc</th>" in table and ">0.6123</td>" in table and "stderr" not in table  # lm-eval scores


@pytest.mark.parametrize("value, text", [(2302318768.8970, "2.3B"), (53536, "53,536"), (6.225884914398193, "6.226"),
                                         (0.61, "0.61"), (None, "-"), (float("nan"), "-"), (1.58, "1.58"), (12345.67, "12,346")])
def test_numbers_are_readable(value, text):
    from lifecycle.display import compact

    assert compact(value) == text


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The page loads in a real browser without console errors; the DOM has the graph and the tables,
    and the screenshot shows them (the graph's highlighted box and the figures' blue are on screen)."""
    import numpy as np
    from matplotlib.image import imread

    page = tmp_path / "browser.html"
    _report(run_dir, page)
    base = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--allow-file-access-from-files",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]
    env = {**cli_env(), "HOME": str(tmp_path)}
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for marker in ('id="fig-lineage"', 'id="score-table"', 'id="merges"', "data:image/png;base64,"):
        assert marker in dom.stdout
    shot = tmp_path / "shot.png"
    run = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    for log in (dom.stderr, run.stderr):
        console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert not console, console
        assert "Not allowed to load local resource" not in log and "net::ERR_" not in log
    pixels = (imread(shot)[..., :3] * 255).round().astype(int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the screenshot is blank"
    highlighted = np.abs(pixels - [0xFD, 0xE3, 0xB3]).max(axis=-1) <= 3  # the merge's box in the graph
    blue = np.abs(pixels - [0x3B, 0x75, 0xAF]).max(axis=-1) <= 3  # the pruning plan's and weights' bars
    assert highlighted.sum() > 500 and blue.sum() > 500
