"""Where training text comes from: built-in corpora, local files and folders, Hub datasets.

A *data spec* is one string:

- a built-in name: ``shakespeare``, ``wikitext``, ``linux_c``, ``python_stdlib`` (offline on every
  machine here; the first three read the project's shared corpora in place, the last the CPython
  standard library of the running interpreter);
- a path to a ``.txt``/``.jsonl``/``.parquet`` file or a folder of them (jsonl/parquet use the
  ``text`` column unless ``#column`` is appended: ``data.jsonl#content``);
- ``hf:NAME[:CONFIG][@SPLIT]`` for a Hugging Face dataset (needs the network or a local cache).

Several specs may be combined with ``+`` (``shakespeare+wikitext``).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import LifecycleError
from lifecycle.paths import shared_data_dir

TEXT_SUFFIXES = {".txt", ".md", ".text", ".tokens", ".py", ".c", ".h", ".jsonl", ".json", ".parquet"}


@dataclass(frozen=True)
class Corpus:
    """Documents for training and, where the source has one, a dedicated held-out set."""

    name: str
    train: list[str]
    validation: list[str] | None = None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.validation or []):
            h.update(str(len(part)).encode())
            for doc in part:
                h.update(hashlib.sha256(doc.encode()).digest())
        return h.hexdigest()[:20]


def _read_text_file(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise LifecycleError(f"{path}:{line_no} is not valid JSON") from None
                if column not in row:
                    raise LifecycleError(f"{path}:{line_no} has no '{column}' field (use {path}#FIELD)")
                docs.append(str(row[column]))
        return docs
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if column not in table.column_names:
            raise LifecycleError(f"{path} has no '{column}' column (columns: {', '.join(table.column_names)})")
        return [str(x) for x in table.column(column).to_pylist()]
    return [path.read_text(encoding="utf-8", errors="replace")]


def _read_path(path: Path, column: str) -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise LifecycleError(f"data folder {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        docs: list[str] = []
        for file in files:
            docs.extend(_read_text_file(file, column))
        return docs
    return _read_text_file(path, column)


def _python_stdlib() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "idlelib", "site-packages", "lib2to3", "tkinter", "ensurepip", "turtledemo"}
    docs = []
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            continue
        try:
            docs.append(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return docs


def _shared_corpus(train_file: str, valid_file: str | None = None) -> tuple[list[str], list[str] | None]:
    root = shared_data_dir() / "corpora"
    train_path = root / train_file
    if not train_path.is_file():
        raise LifecycleError(f"built-in corpus file missing: {train_path}")
    train = [train_path.read_text(encoding="utf-8")]
    valid = None
    if valid_file and (root / valid_file).is_file():
        valid = [(root / valid_file).read_text(encoding="utf-8")]
    return train, valid


BUILTIN_CORPORA = {
    "shakespeare": lambda: _shared_corpus("tinyshakespeare.txt"),
    "wikitext": lambda: _shared_corpus("wikitext2_valid.tokens.txt"),
    "linux_c": lambda: _shared_corpus("linux_c_train.txt", "linux_c_valid.txt"),
    "python_stdlib": lambda: (_python_stdlib(), None),
}


def _load_hf(spec: str) -> list[str]:
    body = spec[len("hf:"):]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise LifecycleError(f"cannot load dataset {spec}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    column = "text" if "text" in ds.column_names else ds.column_names[0]
    return [str(x) for x in ds[column]]


def load_corpus(spec: str) -> Corpus:
    """Read a data spec into documents; empty sources are an error, not an empty dataset."""
    if not spec or not str(spec).strip():
        raise LifecycleError("no data given")
    train: list[str] = []
    validation: list[str] = []
    has_validation = True
    for part in str(spec).split("+"):
        part = part.strip()
        if part in BUILTIN_CORPORA:
            docs, valid = BUILTIN_CORPORA[part]()
        elif part.startswith("hf:"):
            docs, valid = _load_hf(part), None
        else:
            path_str, _, column = part.partition("#")
            path = Path(path_str).expanduser()
            if not path.exists():
                known = ", ".join(BUILTIN_CORPORA)
                raise LifecycleError(f"data not found: {part} (not a file, folder, hf: dataset or built-in corpus: {known})")
            docs, valid = _read_path(path, column or "text"), None
        train.extend(d for d in docs if d.strip())
        if valid:
            validation.extend(valid)
        else:
            has_validation = False
    if not train:
        raise LifecycleError(f"data {spec} is empty")
    return Corpus(name=str(spec), train=train, validation=validation if has_validation and validation else None)
