"""Pushing a finished checkpoint folder to the Hugging Face Hub.

A push is the one step that leaves the machine, so it is deliberately strict:

* the folder must be a complete checkpoint (``config.json``, ``*.safetensors``, a tokenizer file and
  the ``README.md`` model card), because a half-written or weights-only folder on the Hub is worse
  than none; every safetensors file to be sent must have a sound header (an empty or truncated file
  is refused, by a dry run too), read without loading any tensor;
* only files that belong in a model repo are sent: training leftovers (``checkpoints/``, optimizer
  and scheduler state, ``*.tmp``, hidden folders such as the ``.tmp-*`` folders of an interrupted
  save) stay local, and pickled files (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ...) are never
  uploaded, since loading them can run code;
* ``dry_run`` computes exactly the file list a real push would send and contacts nothing;
* the token is never printed or logged, and Hub errors become one-line :class:`LifecycleError`
  messages built by us (library messages can echo request details), with the token scrubbed.

The file selection is done here, not by ``upload_folder``'s own walk, and then handed to
``upload_folder`` as an exact allow-list, so the dry run, the report and the upload cannot disagree.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lifecycle.errors import LifecycleError

DEFAULT_ENDPOINT = "https://huggingface.co"

# Pickle-based formats: loading them can execute arbitrary code, so they never leave the machine.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib")
# Training state and partial writes: useful for resuming locally, noise (or worse) on the Hub.
LEFTOVER_FILE_PATTERNS = ("optimizer*", "scheduler*", "rng_state*", "*.tmp", "*.lock")
# Folders that are never part of a published checkpoint. Hidden folders cover ``.git``, ``.cache``
# and the ``.tmp-*`` / ``.<name>.tmp-*`` folders that an interrupted atomic save leaves behind.
LEFTOVER_DIR_PATTERNS = ("checkpoints", ".*", "__pycache__", "*.tmp-*")
# Handed to upload_folder as well, as a second line of defence should the allow-list ever widen.
IGNORE_PATTERNS = [
    "checkpoints/*",
    "*/checkpoints/*",
    ".tmp-*",
    "*/.tmp-*",
    *PICKLE_PATTERNS,
    *LEFTOVER_FILE_PATTERNS,
    "*/optimizer*",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@dataclass(frozen=True)
class PushFile:
    """One file of the upload, as its path inside the repo and its size in bytes."""

    path: str
    size: int


@dataclass
class PushReport:
    """What a push sent (or, for a dry run, would send) and where it went."""

    folder: Path
    repo_id: str
    repo_url: str
    files: list[PushFile]
    skipped: list[str] = field(default_factory=list)  # "path (reason)" for every file left out
    private: bool = True
    revision: str | None = None
    dry_run: bool = False
    token_source: str | None = None  # "argument", "HF_TOKEN", "stored login" or None; never the token
    commit_url: str | None = None
    pr_url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def select_files(folder: str | Path) -> tuple[list[PushFile], list[str]]:
    """Split a folder into the files to upload and the ones left out (with the reason).

    Kept separate from :func:`push_folder` so that the dry run, the summary and the real upload all
    use one definition of "what gets published".
    """
    root = Path(folder)
    selected: list[PushFile] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        kept_dirs = []
        for name in sorted(dirnames):
            if _matches(name, LEFTOVER_DIR_PATTERNS):
                skipped.append(f"{(rel_dir / name).as_posix()}/ (training leftover or hidden folder)")
            else:
                kept_dirs.append(name)
        dirnames[:] = kept_dirs  # os.walk descends only into what is left here
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if rel.startswith("./"):
                rel = rel[2:]
            full = Path(dirpath) / name
            if _matches(name.lower(), PICKLE_PATTERNS):
                skipped.append(f"{rel} (pickle: never uploaded)")
            elif _matches(name, LEFTOVER_FILE_PATTERNS):
                skipped.append(f"{rel} (training leftover)")
            elif any(fnmatch.fnmatch(rel, pattern) for pattern in IGNORE_PATTERNS):
                skipped.append(f"{rel} (training leftover)")
            elif not full.is_file():
                skipped.append(f"{rel} (not a regular file)")
            else:
                selected.append(PushFile(rel, full.stat().st_size))
    selected.sort(key=lambda f: f.path)
    return selected, skipped


def check_checkpoint(folder: str | Path) -> Path:
    """Refuse folders that are not a complete, loadable checkpoint with a model card."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise LifecycleError(f"cannot push {folder}: not a folder")
    missing = []
    config = path / "config.json"
    if not config.is_file():
        missing.append("config.json")
    else:
        try:
            json.loads(config.read_text())
        except (ValueError, OSError):
            raise LifecycleError(f"cannot push {folder}: config.json is not valid JSON") from None
    if not any(path.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append("a tokenizer file (" + ", ".join(TOKENIZER_FILES) + ")")
    if not (path / "README.md").is_file():
        missing.append("README.md (model card)")
    if missing:
        raise LifecycleError(f"cannot push {folder}: incomplete checkpoint, missing " + "; ".join(missing))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            if not all(isinstance(s, str) for s in shards):
                raise TypeError
        except (ValueError, OSError, AttributeError, TypeError):
            raise LifecycleError(f"cannot push {folder}: model.safetensors.index.json is unreadable") from None
        absent = sorted(s for s in shards if not (path / s).is_file())
        if absent:
            raise LifecycleError(f"cannot push {folder}: missing weight shards {', '.join(absent)}")
    return path.resolve()


def check_weights(folder: Path, files: list[PushFile]) -> None:
    """Read the header of every safetensors file that would be uploaded (never the tensor data).

    An empty, truncated or corrupt weights file, or an index naming a tensor its shard does not
    hold, is refused before anything is reported or sent.
    """
    from lifecycle.model.io import SAFETENSORS_INDEX, read_safetensors_header, read_safetensors_index

    headers: dict[str, dict] = {}
    for item in files:
        if item.path.lower().endswith(".safetensors"):
            try:
                headers[item.path] = read_safetensors_header(folder / item.path)
            except LifecycleError as exc:
                raise LifecycleError(f"cannot push {folder}: {exc}") from None
    if (folder / SAFETENSORS_INDEX).is_file():
        try:
            weight_map = read_safetensors_index(folder / SAFETENSORS_INDEX)
        except LifecycleError as exc:
            raise LifecycleError(f"cannot push {folder}: {exc}") from None
        for name, shard in weight_map.items():
            if name not in headers.get(shard, {}):
                raise LifecycleError(
                    f"cannot push {folder}: {SAFETENSORS_INDEX} puts tensor '{name}' in {shard}, which does not hold it"
                )


def resolve_token(token: str | None = None) -> tuple[str | None, str | None]:
    """Return (token, where it came from): the argument, then ``HF_TOKEN``, then the stored login.

    The source is reported to the user; the token itself never is.
    """
    if token:
        return token, "argument"
    env = os.environ.get("HF_TOKEN")
    if env:
        return env, "HF_TOKEN"
    try:
        from huggingface_hub import get_token
    except ImportError:  # pragma: no cover - huggingface_hub is a hard dependency
        return None, None
    try:
        stored = get_token()
    except Exception:  # a broken token file or OIDC setup is reported as "not logged in"
        stored = None
    return (stored, "stored login") if stored else (None, None)


def _stored_login_exists() -> bool:
    """Whether a saved token file exists, checked without any network access (for dry runs)."""
    try:
        from huggingface_hub import constants

        return Path(constants.HF_TOKEN_PATH).is_file()
    except Exception:
        return False


def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL: the argument, else ``HF_ENDPOINT`` read now (not at import), else huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """Offline if ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set now or was when the Hub library loaded."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:
        return False


def _offline_message(repo_id: str) -> str:
    # The lifecycle CLI defaults HF_HUB_OFFLINE to 1, so "unset it" would not help: say "=0".
    return f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); run with HF_HUB_OFFLINE=0, or use --dry-run"


def _scrub(text: str, token: str | None) -> str:
    """A message folded onto one line and shortened, with the token (should it appear) masked."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    if token:
        line = line.replace(token, "***")
    return line if len(line) <= 300 else line[:297] + "..."


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Transport-level errors of whichever HTTP client this huggingface_hub version uses."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        types.extend(getattr(mod, name) for name in names if isinstance(getattr(mod, name, None), type))
    return tuple(types)


def _hub_error(exc: BaseException, *, repo_id: str, endpoint: str, revision: str | None, token: str | None) -> LifecycleError:
    """Translate a Hub failure into a one-line message; never includes the exception's full text."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    target = f"{endpoint}/{repo_id}"
    if isinstance(exc, OfflineModeIsEnabled):
        return LifecycleError(_offline_message(repo_id))
    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        error_code = response.headers.get("X-Error-Code") if response is not None else None
        if status == 401:
            return LifecycleError(
                f"cannot push to {repo_id}: the Hub rejected the token (401); "
                "set HF_TOKEN or run `hf auth login` with a write token"
            )
        if status == 403:
            return LifecycleError(
                f"cannot push to {repo_id}: permission denied (403); the token needs write access to this namespace"
            )
        if status == 404 and error_code == "RevisionNotFound":
            return LifecycleError(f"cannot push to {repo_id}: revision {revision!r} not found (404)")
        if status == 404:
            return LifecycleError(f"cannot push to {repo_id}: repository or endpoint not found at {target} (404)")
        server = _scrub(getattr(exc, "server_message", None) or "", token)
        detail = f": {server}" if server else ""
        return LifecycleError(f"cannot push to {repo_id}: the Hub answered HTTP {status}{detail}")
    if isinstance(exc, _network_error_types()):
        return LifecycleError(f"cannot push to {repo_id}: cannot reach {endpoint} ({type(exc).__name__}); check the network")
    return LifecycleError(f"cannot push to {repo_id}: {type(exc).__name__}: {_scrub(str(exc), token)}")


def _is_branch_name(revision: str | None) -> bool:
    """A plain branch (not main, not a PR/tag ref, not a commit hash) that push may create."""
    if not revision or revision == "main" or revision.startswith("refs/"):
        return False
    return not (len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower()))


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushReport:
    """Upload a checkpoint folder to a (by default private) Hub model repo.

    The repo is created if missing (``exist_ok``; an existing repo keeps its visibility). With
    ``revision`` set to a branch name the branch is created first; with ``create_pr`` the files go
    to a new pull request against the default branch. ``dry_run`` returns the same report without
    any network access and needs no token.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise LifecycleError(f"invalid repo id {repo_id!r}: expected 'namespace/name'") from None
    if "/" not in repo_id:
        raise LifecycleError(f"invalid repo id {repo_id!r}: expected 'namespace/name'")
    if create_pr and revision not in (None, "main"):
        raise LifecycleError("create_pr opens the pull request against the default branch; do not also set revision")
    path = check_checkpoint(folder)
    files, skipped = select_files(path)
    check_weights(path, files)
    base = resolve_endpoint(endpoint)
    report = PushReport(
        folder=path,
        repo_id=repo_id,
        repo_url=f"{base}/{repo_id}",
        files=files,
        skipped=skipped,
        private=private,
        revision=revision,
        dry_run=dry_run,
    )
    message = commit_message or f"Upload {path.name} with lifecycle"
    if dry_run:
        if token:
            report.token_source = "argument"
        elif os.environ.get("HF_TOKEN"):
            report.token_source = "HF_TOKEN"
        elif _stored_login_exists():
            report.token_source = "stored login"
        return report

    if is_offline():
        raise LifecycleError(_offline_message(repo_id))
    secret, report.token_source = resolve_token(token)
    if not secret:
        raise LifecycleError(
            f"cannot push to {repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login`"
        )

    from huggingface_hub import HfApi

    api = HfApi(endpoint=base, token=secret)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        report.repo_url = str(repo_url).rstrip("/")
        if _is_branch_name(revision):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(path),
            repo_type="model",
            revision=revision,
            commit_message=message,
            create_pr=create_pr or None,
            # An exact allow-list (escaped so names with [*? match literally) keeps the upload
            # identical to the dry run; the ignore list is a second guard against pickles.
            allow_patterns=[glob.escape(f.path) for f in files],
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    except LifecycleError:
        raise
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one scrubbed line
        raise _hub_error(exc, repo_id=repo_id, endpoint=base, revision=revision, token=secret) from None
    report.commit_url = getattr(commit, "commit_url", None)
    report.pr_url = getattr(commit, "pr_url", None)
    return report
