"""Where training text comes from: built-in corpora, local files and folders, Hub datasets.

A *data spec* is one string:

- a built-in name: ``shakespeare``, ``wikitext``, ``linux_c``, ``python_stdlib`` (offline on every
  machine here; the first three read the project's shared corpora in place, the last the CPython
  standard library of the running interpreter);
- a path to a ``.txt``/``.jsonl``/``.parquet`` file or a folder of them (jsonl/parquet use the
  ``text`` column unless ``#column`` is appended: ``data.jsonl#content``);
- ``hf:NAME[:CONFIG][@SPLIT]`` for a Hugging Face dataset (needs the network or a local cache).

Several specs may be combined with ``+`` (``shakespeare+wikitext``): their documents are
concatenated. Each part may end in ``:<weight>`` (``shakespeare:0.3+wikitext:0.7``): then
:func:`lifecycle.data.packing.pack` keeps the parts apart (no block straddles two parts, each part
holds out its own validation tail) and the epoch order draws each part's share of the training
blocks by weight, up- or down-sampling as needed. Weights are positive numbers, given on every part
or on none; only a *trailing* ``:<number>`` is a weight (``hf:NAME:CONFIG`` keeps its colons; a file
whose own name ends in ``:<number>`` is read as that file). Without weights nothing changes: the
documents, blocks and cache keys are those of the plain ``+`` concatenation.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lifecycle.errors import LifecycleError
from lifecycle.paths import shared_data_dir

TEXT_SUFFIXES = {".txt", ".md", ".text", ".tokens", ".py", ".c", ".h", ".jsonl", ".json", ".parquet"}


@dataclass(frozen=True)
class CorpusPart:
    """One ``+`` part of a data spec: its ``train_docs`` documents follow the previous part's in
    :attr:`Corpus.train`; ``validation`` is the part's own held-out set, if it has one."""

    name: str
    train_docs: int
    validation: tuple[str, ...] | None = None
    weight: float | None = None


@dataclass(frozen=True)
class Corpus:
    """Documents for training and, where the source has one, a dedicated held-out set.

    ``parts`` records which documents came from which ``+`` part of the spec (empty for a corpus
    built by hand); it is not part of :meth:`fingerprint`, which hashes the text only.
    """

    name: str
    train: list[str]
    validation: list[str] | None = None
    parts: tuple[CorpusPart, ...] = ()

    @property
    def weights(self) -> tuple[float, ...] | None:
        """Each part's share of the training samples (summing to 1), or None for a plain corpus."""
        if not self.parts or any(p.weight is None for p in self.parts):
            return None
        total = sum(p.weight for p in self.parts)  # type: ignore[misc]
        return tuple(p.weight / total for p in self.parts)  # type: ignore[operator]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.validation or []):
            h.update(str(len(part)).encode())
            for doc in part:
                h.update(hashlib.sha256(doc.encode()).digest())
        return h.hexdigest()[:20]


_UTF8_HINT = "re-encode it as UTF-8"
# What a data file that is not UTF-8 should say: the file can be re-encoded, or its encoding named.
ENCODING_HINT = "re-encode it as UTF-8, or name its encoding (load_corpus(spec, encoding='latin-1'))"


def _codec(encoding: str) -> str:
    """The canonical codec name of ``encoding``; an unknown one is a one-line error."""
    import codecs

    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise LifecycleError(f"unknown text encoding '{encoding}' (examples: utf-8, latin-1, cp1252)") from None


def decode_text(
    data: bytes,
    path: Path | str,
    encoding: str = "utf-8",
    *,
    hint: str = ENCODING_HINT,
    strip_bom: bool = True,
    binary_check: bool = True,
) -> str:
    """``data`` decoded strictly as ``encoding``; bad bytes are a one-line error naming the file.

    The error gives the byte offset (and, for ASCII-compatible encodings, the line) of the first
    byte that does not decode, then ``hint``. With ``binary_check``, text holding a NUL character
    is reported as a binary file instead.
    """
    codec = _codec(encoding)
    wide = codec.startswith(("utf-16", "utf-32"))  # NUL bytes are normal there; NUL characters are not
    if binary_check and not wide:
        nul = data.find(b"\0")
        if nul >= 0:
            raise LifecycleError(
                f"{path} is a binary file, not text (a NUL byte at offset {nul}); give text (.txt, .jsonl) or .parquet files"
            )
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        where = f"byte {exc.start}" + ("" if wide else f" (line {line})")
        name = "UTF-8" if codec == "utf-8" else encoding
        raise LifecycleError(f"{path} is not {name} text: {where} is 0x{data[exc.start]:02x}; {hint}") from None
    if binary_check and wide and "\0" in text:
        raise LifecycleError(
            f"{path} is a binary file, not {encoding} text (a NUL character); give text (.txt, .jsonl) or .parquet files"
        )
    return text[1:] if strip_bom and text.startswith("\ufeff") else text


def decode_utf8(data: bytes, path: Path | str) -> str:
    """``data`` as text; a non-UTF-8 byte is a one-line error naming the file, byte offset and line."""
    return decode_text(data, path, hint=_UTF8_HINT, binary_check=False)


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise LifecycleError(f"{path} is not a regular file (a device, pipe or socket?); give a file or folder of text")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LifecycleError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A whole text file, decoded strictly, with newlines translated as ``Path.read_text`` does.

    For valid UTF-8 the result is exactly ``path.read_text(encoding="utf-8")`` (a byte-order mark
    kept, ``\\r\\n`` and ``\\r`` read as ``\\n``), so corpus fingerprints and cached blocks are those
    of the lenient reader this replaces.
    """
    text = decode_text(_read_bytes(path), path, encoding, strip_bom=False)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def iter_jsonl(
    path: Path, data: bytes | None = None, *, encoding: str = "utf-8", hint: str = _UTF8_HINT
) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for each non-blank line of a JSONL file; every row must be a JSON object.

    Invalid JSON, a row that is not an object, a binary file and bytes that are not ``encoding``
    are one-line errors naming the file (and line). ``data`` is the file's bytes when the caller
    already read them; ``hint`` ends the message for undecodable bytes.
    """
    text = decode_text(_read_bytes(path) if data is None else data, path, encoding, hint=hint)
    # Split on \n only: str.splitlines would also split on U+2028 and friends, legal inside JSON strings.
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LifecycleError(f"{path}:{line_no} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise LifecycleError(f"{path}:{line_no} is a JSON {_json_kind(row)}, not an object with named fields")
        yield line_no, row


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _read_text_file(path: Path, column: str, encoding: str = "utf-8") -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        docs = []
        for line_no, row in iter_jsonl(path, encoding=encoding, hint=ENCODING_HINT):
            if column not in row:
                raise LifecycleError(f"{path}:{line_no} has no '{column}' field (use {path}#FIELD)")
            docs.append(str(row[column]))
        return docs
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not path.is_file():
            _read_bytes(path)  # the same error as for a text file
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LifecycleError(f"{path} is not a readable parquet file ({text}); re-export it") from None
        if column not in table.column_names:
            raise LifecycleError(f"{path} has no '{column}' column (columns: {', '.join(table.column_names)})")
        return [str(x) for x in table.column(column).to_pylist()]
    return [read_text(path, encoding)]


def _read_path(path: Path, column: str, encoding: str = "utf-8") -> list[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise LifecycleError(f"data folder {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        docs: list[str] = []
        for file in files:
            docs.extend(_read_text_file(file, column, encoding))
        return docs
    return _read_text_file(path, column, encoding)


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


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|infinity|nan)", re.IGNORECASE)


def _split_weight(part: str) -> tuple[str, float | None]:
    """``name:0.3`` -> (``name``, 0.3); a part without a trailing ``:<number>`` has no weight."""
    head, sep, tail = part.rpartition(":")
    if not sep or not head.strip() or not _NUMBER.fullmatch(tail.strip()):
        return part, None
    if part in BUILTIN_CORPORA or Path(part).expanduser().exists():
        return part, None  # a file whose own name ends in ':<number>'
    weight = float(tail)
    if not math.isfinite(weight) or weight <= 0:
        raise LifecycleError(f"data spec part '{part}': the weight must be a positive number, got {tail.strip()}")
    return head.strip(), weight


def parse_data_spec(spec: str) -> list[tuple[str, float | None]]:
    """The ``+`` parts of a data spec with their weights (all None when the spec has none)."""
    if not spec or not str(spec).strip():
        raise LifecycleError("no data given")
    parts: list[tuple[str, float | None]] = []
    for raw in str(spec).split("+"):
        raw = raw.strip()
        if not raw:
            raise LifecycleError(f"data spec '{spec}' has an empty part")
        parts.append(_split_weight(raw))
    weighted = [w is not None for _, w in parts]
    if any(weighted) and not all(weighted):
        missing = ", ".join(name for name, w in parts if w is None)
        raise LifecycleError(
            f"data spec '{spec}' weights some parts but not {missing}: give every part a weight or none "
            "(e.g. shakespeare:0.3+wikitext:0.7)"
        )
    return parts


def load_corpus(spec: str, encoding: str = "utf-8") -> Corpus:
    """Read a data spec into documents; empty sources are an error, not an empty dataset.

    Local text and JSONL files are decoded strictly as ``encoding`` (UTF-8 unless named, e.g.
    ``latin-1``): an undecodable byte or a binary file is a one-line error naming the file. Built-in
    corpora and Hub datasets are not affected.
    """
    _codec(encoding)
    train: list[str] = []
    validation: list[str] = []
    has_validation = True
    parts: list[CorpusPart] = []
    for part, weight in parse_data_spec(spec):
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
            docs, valid = _read_path(path, column or "text", encoding), None
        kept = [d for d in docs if d.strip()]
        if weight is not None and not kept:
            raise LifecycleError(f"data part {part} of '{spec}' is empty")
        train.extend(kept)
        parts.append(CorpusPart(part, len(kept), tuple(valid) if valid else None, weight))
        if valid:
            validation.extend(valid)
        else:
            has_validation = False
    if not train:
        raise LifecycleError(f"data {spec} is empty")
    return Corpus(
        name=str(spec),
        train=train,
        validation=validation if has_validation and validation else None,
        parts=tuple(parts),
    )
