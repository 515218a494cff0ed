"""Bad input, as a new user types it: every row runs the real CLI in a subprocess and must end with a
non-zero exit, no traceback, one error line that names the problem, and nothing new on disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_tokenizer):
    """Broken and valid inputs, made once: a checkpoint and corrupted copies of it, odd data files."""
    from conftest import make_tiny_model

    from lifecycle.model.io import save_checkpoint

    root = tmp_path_factory.mktemp("bad-inputs")
    ckpt = save_checkpoint(make_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, root / "ckpt", lineage={"command": "test"})
    paths = {"ckpt": ckpt}

    def variant(name: str) -> Path:
        folder = root / name
        shutil.copytree(ckpt, folder)
        return folder

    truncated = variant("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    empty = variant("empty-weights")
    (empty / "model.safetensors").write_bytes(b"")
    shapes = variant("shapes")
    config = json.loads((shapes / "config.json").read_text())
    config["intermediate_size"] *= 2
    (shapes / "config.json").write_text(json.dumps(config))
    no_tok = variant("no-tokenizer")
    for f in no_tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()
    paths.update(truncated=truncated, empty_weights=empty, shapes=shapes, no_tokenizer=no_tok)

    (root / "latin1.jsonl").write_bytes('{"text": "caf\xe9 cr\xe8me"}\n'.encode("latin-1"))
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 50)
    (root / "random.txt").write_bytes(bytes(range(256)) * 40)
    (root / "rows.jsonl").write_text('["a list, not an object"]\n')
    (root / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    (root / "binary.yaml").write_bytes(b"\x00\x01\x02\xff\xfe binary")
    (root / "bad.json").write_text("{not json")
    (root / "nozero.json").write_text('{"train_batch_size": 8}')
    (root / "empty.txt").write_text("")
    (root / "no-text").mkdir()
    (root / "no-text" / "image.png").write_bytes(b"\x89PNG")
    (root / "a-file").write_text("I am a file")
    (root / "bad.yaml").write_text("name: r\nsteps: [\n")
    (root / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    (root / "tasks-empty").mkdir()
    for name in ("latin1.jsonl", "latin1.txt", "random.txt", "rows.jsonl", "corrupt.parquet", "binary.yaml", "bad.json",
                 "nozero.json", "empty.txt", "no-text", "a-file", "bad.yaml", "fake.gguf", "tasks-empty"):
        paths[name.replace(".", "_").replace("-", "_")] = root / name
    return paths


def _recipe(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return path


TRAIN = ["train", "--config", "micro", "-o", "{tmp}/out", "train.steps=1", "block_size=32", "max_train_tokens=4000"]
FROM_CKPT = ["train", "-m", "{ckpt}", "-o", "{tmp}/out", "train.steps=1", "block_size=32"]
PRUNE = ["prune", "-m", "{ckpt}", "-o", "{tmp}/out", "--ratio", "0.3", "calib_samples=2", "calib_length=16"]

# (id, arguments, message the error line must contain, optional recipe text written to {tmp}/recipe.yaml)
ROWS: list[tuple[str, list[str], str, str | None]] = [
    # usage errors (Typer's own parser)
    ("no-arguments", [], "Usage", None),
    ("unknown-command", ["frobnicate"], "No such command", None),
    ("unknown-option", ["train", "--frob"], "No such option", None),
    ("missing-required", ["prune", "-o", "{tmp}/out"], "Missing option", None),
    ("limit-not-a-number", ["eval", "-m", "{ckpt}", "--limit", "abc"], "Invalid value for '--limit'", None),
    ("zero-processes", ["train", "-n", "0", "--config", "micro", "-o", "{tmp}/out"], "Invalid value", None),
    ("steps-not-a-number", ["train", "--config", "micro", "-o", "{tmp}/out", "--steps", "many"], "Invalid value", None),
    # options and overrides
    ("unknown-override", [*TRAIN, "train.stepz=1"], "train.stepz: unknown option", None),
    ("override-not-key-value", [*TRAIN, "nokey"], "not key=value", None),
    ("override-wrong-type", [*TRAIN, "train.lr=fast"], "train.lr", None),
    ("config-and-model", ["train", "--config", "micro", "-m", "{ckpt}", "-o", "{tmp}/out"], "exactly one of model", None),
    ("unknown-preset", ["train", "--config", "huge", "-o", "{tmp}/out"], "unknown model config", None),
    ("options-file-missing", [*TRAIN, "--options", "{tmp}/missing.yaml"], "options file not found", None),
    ("options-file-binary", [*TRAIN, "--options", "{binary_yaml}"], "not UTF-8", None),
    ("options-unknown-command", ["options", "frob"], "unknown command", None),
    ("limit-fraction-above-one", ["eval", "-m", "{ckpt}", "--tasks", "copa", "--limit", "2.5"], "limit", None),
    # eval task names, found before any work
    ("train-eval-typo", [*TRAIN, "eval.tasks=arc_eazy"], "unknown task arc_eazy", None),
    ("grow-eval-typo", ["grow", "--config", "micro", "-o", "{tmp}/out", "train.steps=4", "eval.tasks=arc_eazy"],
     "unknown task arc_eazy", None),
    ("prune-eval-typo", [*PRUNE, "eval.tasks=arc_eazy"], "unknown task arc_eazy", None),
    ("eval-unknown-task", ["eval", "-m", "{ckpt}", "--tasks", "arc_eazy"], "unknown task arc_eazy", None),
    ("eval-include-path-missing", ["eval", "-m", "{ckpt}", "--tasks", "copa", "--include-path", "{tmp}/nope"],
     "include path", None),
    ("eval-include-path-empty", ["eval", "-m", "{ckpt}", "--tasks", "copa", "--include-path", "{tasks_empty}"],
     "defines no lm-eval task", None),
    # data specs
    ("data-empty-part", [*TRAIN, "--data", "shakespeare+"], "empty part", None),
    ("data-leading-plus", [*TRAIN, "--data", "+wikitext"], "empty part", None),
    ("data-missing", [*TRAIN, "--data", "{tmp}/nope.txt"], "data not found", None),
    ("data-empty-file", [*TRAIN, "--data", "{empty_txt}"], "empty", None),
    ("data-folder-without-text", [*TRAIN, "--data", "{no_text}"], "no text files", None),
    ("data-latin1-jsonl", [*TRAIN, "--data", "{latin1_jsonl}"], "UTF-8", None),
    ("data-latin1-text", [*TRAIN, "--data", "{latin1_txt}"], "UTF-8", None),
    ("data-random-bytes", [*TRAIN, "--data", "{random_txt}"], "random.txt", None),
    ("data-rows-not-objects", [*TRAIN, "--data", "{rows_jsonl}"], "rows.jsonl", None),
    ("data-corrupt-parquet", [*TRAIN, "--data", "{corrupt_parquet}"], "corrupt.parquet", None),
    ("data-bad-weight", [*TRAIN, "--data", "shakespeare:0+wikitext:1"], "weight", None),
    # models
    ("model-missing", ["train", "-m", "/nonexistent/model", "-o", "{tmp}/out"], "model not found", None),
    ("model-truncated-safetensors", [*FROM_CKPT[:2], "{truncated}", *FROM_CKPT[3:]], "model.safetensors", None),
    ("model-empty-safetensors", ["eval", "-m", "{empty_weights}", "--tasks", "copa"], "model.safetensors", None),
    ("model-config-vs-weights", ["eval", "-m", "{shapes}", "--tasks", "copa"], "shape", None),
    ("model-without-tokenizer", ["eval", "-m", "{no_tokenizer}", "--tasks", "copa"], "tokenizer", None),
    ("model-fake-gguf", ["eval", "-m", "{fake_gguf}", "--tasks", "copa"], "not a GGUF", None),
    ("block-size-above-positions", [*FROM_CKPT[:-1], "block_size=4096"], "exceeds the model's 256 positions", None),
    ("calib-length-above-positions", [*PRUNE[:-1], "calib_length=4096"], "calib_length 4096 exceeds", None),
    # outputs
    ("output-exists", ["train", "--config", "micro", "-o", "{ckpt}", "train.steps=1"], "exists", None),
    ("output-under-a-file", ["train", "--config", "micro", "-o", "{a_file}/out", "train.steps=1"], "a-file", None),
    ("output-read-only", ["train", "--config", "micro", "-o", "/proc/lifecycle-out", "train.steps=1"], "/proc", None),
    ("eval-output-under-a-file", ["eval", "-m", "{ckpt}", "--tasks", "copa", "-o", "{a_file}/r.json"], "a-file", None),
    # DeepSpeed and resume
    ("deepspeed-missing", [*TRAIN, "--deepspeed", "{tmp}/ds.json"], "DeepSpeed config not found", None),
    ("deepspeed-invalid-json", [*TRAIN, "--deepspeed", "{bad_json}"], "not valid JSON", None),
    ("deepspeed-no-zero", [*TRAIN, "--deepspeed", "{nozero_json}"], "zero_optimization", None),
    ("resume-strict-no-checkpoint", [*TRAIN, "--resume", "resume_strict=true"], "no checkpoint", None),
    # grow and prune arguments
    ("grow-same-depth", ["grow", "-m", "{ckpt}", "-o", "{tmp}/out", "--target-layers", "2"], "must exceed", None),
    ("grow-factor-rounds-to-same-depth", ["grow", "-m", "{ckpt}", "-o", "{tmp}/out", "--factor", "1.2"], "equals the source", None),
    ("grow-factor-below-one", ["grow", "-m", "{ckpt}", "-o", "{tmp}/out", "--factor", "0.5"], "growth factor", None),
    ("prune-two-targets", [*PRUNE, "--target-params", "1M"], "exactly one of", None),
    ("prune-unknown-method", [*PRUNE, "--method", "magic"], "unknown prune method 'magic'", None),
    ("prune-group-of-other-method", [*PRUNE, "layerwise.x=1"], "unknown option", None),
    ("prune-plan-binary", ["prune", "-m", "{ckpt}", "-o", "{tmp}/out", "--plan", "{binary_yaml}", "calib_samples=2"],
     "binary.yaml", None),
    ("prune-plan-missing", ["prune", "-m", "{ckpt}", "-o", "{tmp}/out", "--plan", "{tmp}/plan.yaml"], "plan file not found", None),
    ("prune-layer-range-outside-model", [*PRUNE, "--method", "taylor-uniform", "--attention-ratio", "0.5", "prune_layers=1:99"],
     "is not a range of the model", None),
    ("prune-reference-kd-alpha-above-one", [*PRUNE, "train.steps=2", "distill=3"], "distill_loss=added", None),
    ("prune-taylor-order-other-method", [*PRUNE, "--method", "flap", "taylor=param_mix"], "apply to method taylor-uniform", None),
    # recipes
    ("recipe-missing", ["run", "{tmp}/missing.yaml"], "recipe not found", None),
    ("recipe-invalid-yaml", ["run", "{bad_yaml}"], "not valid YAML", None),
    ("recipe-unknown-command", ["run", "{tmp}/recipe.yaml", "--dry-run"], "unknown command 'trian'",
     "name: r\nsteps:\n  - {name: a, command: trian, config: micro}\n"),
    ("recipe-duplicate-step", ["run", "{tmp}/recipe.yaml", "--dry-run"], "duplicate step name",
     "name: r\nsteps:\n  - {name: a, command: train, config: micro}\n  - {name: a, command: train, config: micro}\n"),
    ("recipe-unknown-field", ["run", "{tmp}/recipe.yaml", "--dry-run"], "trian_steps: unknown option",
     "name: r\nsteps:\n  - {name: a, command: train, config: micro, trian_steps: 3}\n"),
    ("recipe-eval-typo", ["run", "{tmp}/recipe.yaml", "--dry-run"], "unknown task arc_eazy",
     "name: r\nsteps:\n  - {name: a, command: train, config: micro}\n  - {name: b, command: eval, tasks: arc_eazy}\n"),
    ("recipe-eval-missing-model", ["run", "{tmp}/recipe.yaml", "--dry-run"], "model not found",
     "name: r\nsteps:\n  - {name: b, command: eval, model: /nonexistent/model, tasks: copa}\n"),
    ("recipe-bad-step-reference", ["run", "{tmp}/recipe.yaml", "--dry-run"], "names no earlier step",
     "name: r\nsteps:\n  - {name: b, command: eval, model: steps.nope, tasks: copa}\n"),
    ("recipe-override-matches-nothing", ["run", "{tmp}/recipe.yaml", "--dry-run", "frob=1"], "matches no step option",
     "name: r\nsteps:\n  - {name: a, command: train, config: micro}\n"),
    ("push-truncated", ["push", "{truncated}", "--repo-id", "me/x", "--dry-run"], "model.safetensors", None),
    ("push-missing-folder", ["push", "{tmp}/nope", "--repo-id", "me/x", "--dry-run"], "nope", None),
]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """Every row's CLI run, three at a time (each a fresh interpreter; most of a row is imports)."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import cli_env

    input_root = inputs["ckpt"].parent
    inputs_before = _listing(input_root)

    def one(row):
        name, args, _, recipe = row
        tmp = tmp_path_factory.mktemp(name)
        if recipe is not None:
            _recipe(tmp, f"output_dir: {tmp / 'runs'}\n" + recipe)
        values = {k: str(v) for k, v in inputs.items()}
        values["tmp"] = str(tmp)
        before = _listing(tmp)
        proc = subprocess.run([sys.executable, "-m", "lifecycle", *[a.format(**values) for a in args]], capture_output=True,
                              text=True, env=cli_env(COLUMNS="200"), cwd=tmp, timeout=600)
        return name, (proc.returncode, proc.stdout + proc.stderr, _listing(tmp) - before)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(pool.map(one, ROWS))
    return done, _listing(input_root) - inputs_before


def test_there_are_at_least_fifty_rows():
    assert len(ROWS) >= 50 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_fails_cleanly(row, runs):
    name, _, message, _ = row
    results, inputs_left = runs
    code, out, left = results[name]
    assert code != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith(("error:", "Error:"))]
    if message == "Usage":
        assert "Usage" in out, out
    else:
        assert len(errors) == 1, out
        assert message.lower() in errors[0].lower(), out
    assert not left, f"left behind: {left}"
    assert not inputs_left, f"left beside the inputs: {inputs_left}"


def test_version():
    proc = subprocess.run([sys.executable, "-m", "lifecycle", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("lifecycle ")


def test_unexpected_errors_are_one_line_with_a_debug_hint(tmp_path):
    """A bug still ends in one line (and LIFECYCLE_DEBUG=1 shows its traceback)."""
    code = ("import sys; from lifecycle.boundary import run_guarded\n"
            "def app(**kw):\n    raise ZeroDivisionError('boom')\n"
            "sys.exit(run_guarded(app, []))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unexpected ZeroDivisionError: boom" in proc.stderr and "LIFECYCLE_DEBUG=1" in proc.stderr
    debug = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, LIFECYCLE_DEBUG="1"))
    assert "Traceback" in debug.stderr
