"""``lifecycle push`` against a local stand-in for the Hub API: no network, no real token.

huggingface_hub ships no test double for its HTTP API, so :class:`HubStandIn` implements the few
endpoints that ``create_repo``/``create_branch``/``upload_folder``/``create_pull_request`` call
(``/api/repos/create``, ``.../branch/<b>``, ``.../preupload/<rev>``, ``.../commit/<rev>`` and
``.../discussions``) on 127.0.0.1 and records every request. It answers ``uploadMode: regular`` to
preupload, so files travel base64-encoded inside the NDJSON commit and no LFS/Xet storage is needed.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from lifecycle.errors import LifecycleError
from lifecycle.hub import push_folder, resolve_token, select_files

SECRET = "hf_lifecycleTestToken0123456789abcdefXYZ"
REPO = "lc-org/tiny-push"
MAX_BODY = 16 * 1024 * 1024  # the stand-in refuses anything larger: tests only send tiny files


# --------------------------------------------------------------------------------------- stand-in


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(repr=False)  # lower-case names
    body: bytes = field(repr=False)


@dataclass
class HubState:
    """What the stand-in saw, and the failures a test asked it to produce."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)  # repo_id -> create payload
    branches: list[str] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)  # {"revision", "summary", "files": {path: bytes}}
    prs: int = 0
    validated: list[str] = field(default_factory=list)  # README contents sent to validate-yaml
    fail: dict[str, int] = field(default_factory=dict)  # endpoint name -> HTTP status to answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def files(self) -> dict[str, bytes]:
        merged: dict[str, bytes] = {}
        for commit in self.commits:
            merged.update(commit["files"])
        return merged


class _Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the per-server subclass
    timeout = 10  # a stuck client cannot hold a handler thread for long

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Received:
        parts = urlsplit(self.path)
        received = Received(self.command, unquote(parts.path), parts.query, {k.lower(): v for k, v in self.headers.items()}, self._body())
        with self.state.lock:
            self.state.requests.append(received)
        return received

    # -- routing

    def do_GET(self) -> None:
        req = self._record()
        segs = req.path.strip("/").split("/")
        if segs[:2] == ["api", "models"] and len(segs) == 6 and segs[4] == "discussions":
            repo_id = f"{segs[2]}/{segs[3]}"
            num = int(segs[5])
            return self._reply(200, _pr_details(repo_id, num))
        # repo_info and anything else: unknown here
        self._reply(404, {"error": "not found"}, {"X-Error-Code": "RepoNotFound"})

    def do_POST(self) -> None:
        req = self._record()
        segs = req.path.strip("/").split("/")
        state = self.state
        if segs == ["api", "repos", "create"]:
            return self._create(req)
        if segs == ["api", "validate-yaml"]:
            return self._validate_yaml(req)
        if segs[:2] != ["api", "models"] or len(segs) < 5:
            return self._reply(404, {"error": f"unknown endpoint {req.path}"})
        repo_id, action, rest = f"{segs[2]}/{segs[3]}", segs[4], "/".join(segs[5:])
        if action in state.fail:
            code = "RepoNotFound" if state.fail[action] == 404 else "Error"
            return self._reply(state.fail[action], {"error": "injected failure"}, {"X-Error-Code": code})
        if repo_id not in state.repos:
            return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "branch":
            with state.lock:
                state.branches.append(rest)
            return self._reply(200, {})
        if action == "preupload":
            files = json.loads(req.body)["files"]
            return self._reply(
                200,
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]},
            )
        if action == "commit":
            return self._commit(repo_id, rest, req)
        if action == "discussions":
            with state.lock:
                state.prs += 1
                num = state.prs
            return self._reply(200, {"num": num, "url": f"{state.url}/{repo_id}/discussions/{num}"})
        self._reply(404, {"error": f"unknown endpoint {req.path}"})

    def _create(self, req: Received) -> None:
        state = self.state
        if "create" in state.fail:
            return self._reply(state.fail["create"], {"error": "injected failure"})
        payload = json.loads(req.body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        with state.lock:
            exists = repo_id in state.repos
            state.repos.setdefault(repo_id, payload)
        if exists:
            return self._reply(409, {"error": "You already created this model repo", "url": f"{state.url}/{repo_id}"})
        self._reply(200, {"url": f"{state.url}/{repo_id}"})

    def _validate_yaml(self, req: Received) -> None:
        """Like the Hub: the README's front matter must be a YAML mapping."""
        import yaml

        content = json.loads(req.body)["content"]
        with self.state.lock:
            self.state.validated.append(content)
        try:
            _, front, _ = content.split("---", 2)
            if not isinstance(yaml.safe_load(front), dict):
                raise ValueError("front matter is not a mapping")
        except ValueError as exc:
            return self._reply(400, {"errors": [{"message": str(exc)}], "warnings": []})
        self._reply(200, {"errors": [], "warnings": []})

    def _commit(self, repo_id: str, revision: str, req: Received) -> None:
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files: dict[str, bytes] = {}
        for item in lines:
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] != "header":  # lfsFile/deletedFile: this stand-in has no storage for them
                return self._reply(400, {"error": f"unsupported operation {item['key']}"})
        with self.state.lock:
            self.state.commits.append({"revision": revision, "summary": header["summary"], "files": files})
            oid = f"{len(self.state.commits):040x}"
        self._reply(200, {"commitUrl": f"{self.state.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})


def _pr_details(repo_id: str, num: int) -> dict:
    return {
        "title": "push",
        "num": num,
        "author": {"name": "tester"},
        "createdAt": "2026-01-01T00:00:00.000Z",
        "status": "draft",
        "repo": {"name": repo_id, "type": "model"},
        "isPullRequest": True,
        "events": [],
        "changes": {"base": "refs/heads/main"},
        "filesWithConflicts": [],
    }


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Undo the suite's offline default and any real login, for tests that talk to the stand-in.

    Also fails the test if huggingface_hub sends anything to a host other than 127.0.0.1: with
    offline mode off, the library would otherwise fetch its agent-harness registry from
    huggingface.co while building request headers, so that lookup is pre-empted here.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    try:
        from huggingface_hub.utils import _detect_agent
    except ImportError:  # older huggingface_hub: no agent detection
        pass
    else:
        if hasattr(_detect_agent, "_EMPTY_REGISTRY"):
            monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)

    outside: list[str] = []

    def only_local(request) -> None:
        if request.url.host != "127.0.0.1":
            outside.append(str(request.url))

    hooks = get_session().event_hooks["request"]
    hooks.append(only_local)
    try:
        yield
    finally:
        hooks.remove(only_local)
    assert outside == [], f"requests left the machine: {outside}"


@pytest.fixture
def hub(online):
    """A running stand-in Hub on a random local port; shut down after the test."""
    state = HubState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------- checkpoint


def _tiny_tokenizer():
    """A word-level tokenizer trained in-process: no download, a handful of tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    text = ["the model grows and is pruned", "a tiny llama pushed to a local hub", "tokens in tokens out"]
    tok.train_from_iterator(text, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    """One tiny Llama checkpoint written the lifecycle way (atomic save + card), copied per test."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import save_checkpoint

    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    lineage = new_lineage(command="train", method="full", parents=["HuggingFaceTB/SmolLM2-135M"], options={"lr": 1e-4})
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("base") / "tiny", lineage=lineage)


LEFTOVERS = {
    "pytorch_model.bin": b"\x80\x04pickle",
    "optimizer.pt": b"\x80\x04optim",
    "scheduler.pt": b"\x80\x04sched",
    "training_args.bin": b"\x80\x04args",
    "notes.tmp": b"partial",
    "extra.pkl": b"\x80\x04",
    "checkpoints/step-10/model.safetensors": b"old weights",
    "checkpoints/step-10/optimizer.bin": b"\x80\x04",
    ".tmp-save/model.safetensors": b"half written",
    ".tiny.tmp-abc123/config.json": b"{}",
    "eval/optimizer_state.pt": b"\x80\x04",
}
KEPT_EXTRAS = {"eval/results.json": b'{"lc_mc": {"acc": 0.5}}', "notes/run [v1].md": b"# notes"}


@pytest.fixture
def checkpoint(base_checkpoint, tmp_path) -> Path:
    """A copy of the tiny checkpoint littered with training leftovers and pickles."""
    folder = tmp_path / "tiny"
    shutil.copytree(base_checkpoint, folder)
    for rel, data in {**LEFTOVERS, **KEPT_EXTRAS}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _expected_files(folder: Path) -> set[str]:
    every = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return every - set(LEFTOVERS)


# --------------------------------------------------------------------------------------- tests


def test_push_sends_checkpoint_not_leftovers_and_keeps_token_secret(hub, checkpoint, monkeypatch, capfd, caplog):
    from huggingface_hub.utils import logging as hf_logging

    monkeypatch.setenv("HF_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    hf_logging.set_verbosity_debug()
    try:
        report = push_folder(checkpoint, REPO, endpoint=hub.url, commit_message="first push")
    finally:
        hf_logging.set_verbosity_warning()

    sent = hub.files
    expected = _expected_files(checkpoint)
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "eval/results.json"} <= expected
    assert set(sent) == expected == {f.path for f in report.files}
    for rel, data in sent.items():
        assert data == (checkpoint / rel).read_bytes(), rel
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".tmp")) or "checkpoints/" in name for name in sent)
    assert report.total_bytes == sum(len(v) for v in sent.values())
    assert any(s.startswith("pytorch_model.bin") for s in report.skipped)

    assert hub.repos[REPO]["visibility"] == "private"
    assert [c["summary"] for c in hub.commits] == ["first push"]
    assert report.repo_url == f"{hub.url}/{REPO}" and report.commit_url.startswith(f"{hub.url}/{REPO}/commit/")
    assert report.token_source == "HF_TOKEN"
    # Every request authenticated with the token ...
    assert hub.requests and all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in hub.requests)
    # ... which never shows up in anything the user (or a log collector) sees.
    out, err = capfd.readouterr()
    assert "Request" in err or caplog.text  # debug logging really was on
    for text in (out, err, caplog.text, repr(report)):
        assert SECRET not in text


def test_token_argument_wins_and_public_repo(hub, checkpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_envTokenShouldNotBeUsed")
    report = push_folder(checkpoint, REPO, private=False, token=SECRET, endpoint=hub.url)
    assert report.token_source == "argument"
    assert {r.headers.get("authorization") for r in hub.requests} == {f"Bearer {SECRET}"}
    assert hub.repos[REPO]["visibility"] == "public"


def test_resolve_token_order(online, monkeypatch, tmp_path):
    from huggingface_hub import constants

    assert resolve_token(None) == (None, None)
    login = tmp_path / "login" / "token"
    login.parent.mkdir()
    login.write_text("hf_storedLoginToken")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(login))
    assert resolve_token(None) == ("hf_storedLoginToken", "stored login")
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert resolve_token(None) == ("hf_env", "HF_TOKEN")
    assert resolve_token("hf_arg") == ("hf_arg", "argument")


def test_existing_repo_branch_and_pull_request(hub, checkpoint):
    push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    # Second push: the repo exists (409 is fine), the branch is created first.
    report = push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url, revision="dev")
    assert hub.branches == ["dev"] and hub.commits[-1]["revision"] == "dev"
    assert report.revision == "dev"
    # Pull request: opened against main, files committed to its ref.
    report = push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url, create_pr=True)
    assert hub.prs == 1 and hub.commits[-1]["revision"] == "refs/pr/1"
    assert report.pr_url == f"{hub.url}/{REPO}/discussions/1"
    with pytest.raises(LifecycleError, match="pull request"):
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url, create_pr=True, revision="dev")


def test_dry_run_contacts_nothing(hub, checkpoint, monkeypatch):
    import huggingface_hub

    def no_api(*args, **kwargs):
        raise AssertionError("dry run must not create an HfApi client")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_api)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # works offline and without a token
    report = push_folder(checkpoint, REPO, dry_run=True, endpoint=hub.url)
    assert hub.requests == []
    assert report.dry_run and report.commit_url is None and report.token_source is None
    assert {f.path for f in report.files} == _expected_files(checkpoint)
    sizes = {f.path: f.size for f in report.files}
    assert sizes["model.safetensors"] == (checkpoint / "model.safetensors").stat().st_size
    assert report.repo_url == f"{hub.url}/{REPO}"


def test_push_command_prints_summary_and_returns_folder(checkpoint, online, capsys, monkeypatch):
    from pydantic import ValidationError

    from lifecycle.commands import COMMANDS
    from lifecycle.commands.push import PushOptions

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # read at call time
    command = COMMANDS["push"]
    assert command.options is PushOptions and command.model_field == "model"
    options = PushOptions(model=str(checkpoint), repo_id=REPO, dry_run=True)
    assert options.private is True
    result = command.run(options)
    assert result == checkpoint.resolve()
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "config.json" in out and "tokenizer.json" in out
    assert f"http://127.0.0.1:9/{REPO}" in out
    assert "total:" in out and "dry run" in out and "pytorch_model.bin" in out
    with pytest.raises(ValidationError):
        PushOptions(model=str(checkpoint), repo_id=REPO, token="hf_x")  # no token option, by design


def test_offline_mode_is_a_one_line_error(hub, checkpoint, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LifecycleError, match="offline") as info:
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    assert "\n" not in str(info.value) and hub.requests == []


def test_library_offline_error_is_translated(hub, checkpoint, monkeypatch):
    """If only huggingface_hub knows it is offline, its OfflineModeIsEnabled still becomes one line."""
    from huggingface_hub import constants

    import lifecycle.hub

    monkeypatch.setattr(lifecycle.hub, "is_offline", lambda: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LifecycleError, match="offline mode") as info:
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "\n" not in str(info.value) and hub.requests == []


@pytest.mark.parametrize(
    ("endpoint", "status", "pattern"),
    [
        ("create", 401, "rejected the token"),
        ("create", 403, "permission denied"),
        ("preupload", 404, "not found"),
        ("commit", 403, "permission denied"),
        ("commit", 413, "HTTP 413"),
    ],
)
def test_http_errors_are_one_line(hub, checkpoint, capfd, endpoint, status, pattern):
    hub.fail[endpoint] = status
    with pytest.raises(LifecycleError, match=pattern) as info:
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    message = str(info.value)
    assert "\n" not in message and SECRET not in message and str(status) in message
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_network_down_is_one_line(online, checkpoint):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LifecycleError, match="cannot reach") as info:
        push_folder(checkpoint, REPO, token=SECRET, endpoint=f"http://127.0.0.1:{port}")
    assert "\n" not in str(info.value)


def test_no_token_is_refused_before_contacting(hub, checkpoint):
    with pytest.raises(LifecycleError, match="no Hugging Face token"):
        push_folder(checkpoint, REPO, endpoint=hub.url)
    assert hub.requests == []


@pytest.mark.parametrize(
    ("remove", "pattern"),
    [
        ("config.json", "config.json"),
        ("model.safetensors", "safetensors"),
        ("tokenizer.json", "tokenizer"),
        ("README.md", "README.md"),
    ],
)
def test_incomplete_folder_is_refused(hub, checkpoint, remove, pattern):
    (checkpoint / remove).unlink()
    with pytest.raises(LifecycleError, match=pattern):
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    with pytest.raises(LifecycleError, match="incomplete"):
        push_folder(checkpoint, REPO, dry_run=True, endpoint=hub.url)
    assert hub.requests == []


def test_missing_shard_and_bad_input_are_refused(online, checkpoint, tmp_path):
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LifecycleError, match="missing weight shards"):
        push_folder(checkpoint, REPO, dry_run=True)
    with pytest.raises(LifecycleError, match="not a folder"):
        push_folder(tmp_path / "nope", REPO, dry_run=True)
    with pytest.raises(LifecycleError, match="invalid repo id"):
        push_folder(checkpoint, "not a repo id", dry_run=True)


def test_select_files_rules(tmp_path):
    for rel in ["config.json", "weird[1].safetensors", "sub/optimizer.pt", "sub/keep.txt", ".git/HEAD", "x.PT", "a.lock"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    files, skipped = select_files(tmp_path)
    assert [f.path for f in files] == ["config.json", "sub/keep.txt", "weird[1].safetensors"]
    assert any(s.startswith(".git/") for s in skipped) and any(s.startswith("x.PT") for s in skipped)


def test_cli_push_offline_prints_one_line_and_exits_nonzero(checkpoint, monkeypatch, capsys):
    """Through the real entry point: the CLI's offline default gives one line, no traceback, no token."""
    import lifecycle.cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr("sys.argv", ["lifecycle", "push", str(checkpoint), "--repo-id", REPO])
    with pytest.raises(SystemExit) as info:
        lifecycle.cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines == [f"error: cannot push to {REPO}: offline mode is on (HF_HUB_OFFLINE=1); run with HF_HUB_OFFLINE=0, or use --dry-run"]
    assert SECRET not in captured.out + captured.err


def test_invalid_card_metadata_is_one_line(hub, checkpoint):
    """The Hub's README check (validate-yaml) failing becomes one line naming the problem."""
    readme = checkpoint / "README.md"
    readme.write_text("---\n- not\n- a mapping\n---\n# card\n")
    with pytest.raises(LifecycleError, match="Invalid metadata in README.md") as info:
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    assert "\n" not in str(info.value) and "mapping" in str(info.value)
    assert hub.commits == [] and hub.validated == [readme.read_text()]


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [("truncate", r"model\.safetensors is truncated"), ("empty", r"model\.safetensors is empty \(0 bytes\)")],
)
def test_broken_weights_are_refused_even_by_a_dry_run(hub, checkpoint, damage, pattern):
    """A dry run used to say "would upload" for a half-written model.safetensors; headers are read first.

    The fixture's leftovers (``checkpoints/step-10/model.safetensors``, ``.tmp-save/...``) are junk too,
    but they are not uploaded, so they are not checked: the other tests push this folder fine.
    """
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with pytest.raises(LifecycleError, match=pattern) as info:
        push_folder(checkpoint, REPO, dry_run=True, endpoint=hub.url)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot push {checkpoint.resolve()}: ") and str(weights.name) in message
    with pytest.raises(LifecycleError, match=pattern):
        push_folder(checkpoint, REPO, token=SECRET, endpoint=hub.url)
    assert hub.requests == []


def test_index_naming_a_tensor_its_shard_lacks_is_refused(online, checkpoint):
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model.safetensors", "no.such.tensor": "model.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LifecycleError, match="puts tensor 'no.such.tensor' in model.safetensors, which does not hold it"):
        push_folder(checkpoint, REPO, dry_run=True)


def test_cli_dry_run_of_truncated_weights_is_one_line(checkpoint, monkeypatch, capsys):
    import lifecycle.cli

    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    monkeypatch.setattr("sys.argv", ["lifecycle", "push", str(checkpoint), "--repo-id", REPO, "--dry-run"])
    with pytest.raises(SystemExit) as info:
        lifecycle.cli.main()
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.safetensors is truncated" in lines[0]
    assert "would upload" not in captured.out
