"""Offline text: Python's own documentation and standard-library sources, split by document.

Every machine with Python has them: ``pydoc_data.topics`` (the language reference's help topics,
English prose) and the standard library's top-level modules (code with docstrings and comments).
A document goes to the held-out split by a hash of its name, never by position, so adding or
removing documents moves no other document between splits, and a model is never scored on text
whose document it trained on. The texts depend on the Python version that reads them; a
``Corpus`` carries that version and a fingerprint of its texts, which model cards record so a
later evaluation can tell when it is reading other text.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

KINDS = ("docs", "code")
HELD_OUT = 0.1  # share of documents held out (by name hash)


@dataclass(frozen=True)
class Document:
    name: str  # "docs:for", "code:argparse.py": unique within a corpus
    kind: str  # "docs" (pydoc topics) or "code" (a standard-library module's source)
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents split into train and held-out, with where they came from."""

    train: tuple[Document, ...]
    held_out: tuple[Document, ...]
    python: str  # "3.11.9": the interpreter whose documentation and sources these are

    def split(self, name: str) -> tuple[Document, ...]:
        if name not in ("train", "held_out"):
            raise ValueError(f"split {name!r}: use 'train' or 'held_out'")
        return self.train if name == "train" else self.held_out

    @property
    def fingerprint(self) -> str:
        """16 hex digits of sha256 over every document's split, name and text."""
        h = hashlib.sha256()
        for split in ("train", "held_out"):
            for d in self.split(split):
                h.update(f"{split}\0{d.name}\0".encode())
                h.update(d.text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {"python": self.python, "fingerprint": self.fingerprint, "documents": [len(self.train), len(self.held_out)],
                "characters": [sum(len(d.text) for d in self.train), sum(len(d.text) for d in self.held_out)]}


def _stdlib_modules() -> list[Path]:
    """The standard library's top-level ``*.py`` modules, sorted (no packages, no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("__"))


def python_documents(kinds: Sequence[str] = KINDS, max_chars: int | None = None) -> list[Document]:
    """The documents of ``kinds``: "docs" (one per pydoc topic) and "code" (one per stdlib module).

    ``max_chars`` cuts each document to its first characters (None: whole). Modules that are not
    UTF-8 text are skipped.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds {list(kinds)!r}: choose from {', '.join(KINDS)}")
    docs: list[Document] = []
    if "docs" in kinds:
        from pydoc_data.topics import topics

        docs += [Document(f"docs:{name}", "docs", text) for name, text in sorted(topics.items()) if text.strip()]
    if "code" in kinds:
        for path in _stdlib_modules():
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                docs.append(Document(f"code:{path.name}", "code", text))
    if max_chars is not None:
        if max_chars < 1:
            raise ValueError(f"max_chars={max_chars} must be >= 1 (None: whole documents)")
        docs = [Document(d.name, d.kind, d.text[:max_chars]) for d in docs]
    return docs


def _held_out_score(name: str, salt: str) -> float:
    """A number in [0, 1) fixed by the document's name: the split never depends on order."""
    return int.from_bytes(hashlib.sha256(f"{salt}\0{name}".encode()).digest()[:8], "big") / 2**64


def split_documents(docs: Iterable[Document], held_out: float = HELD_OUT, salt: str = "fewstep",
                    python: str | None = None) -> Corpus:
    """Documents into train and held-out by a hash of each name (``held_out``: the share held out).

    At least one document lands on each side (the lowest-scoring one is held out when the hash
    holds out none, the highest trains when it holds out all). Raises for fewer than two
    documents or duplicate names.
    """
    docs = list(docs)
    if not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out} must be in (0, 1)")
    if len(docs) < 2:
        raise ValueError(f"a corpus of {len(docs)} document(s) is too small to split into train and held-out: "
                         "give at least 2 documents (split by document, so one cannot be both)")
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"document names must be unique; repeated: {', '.join(dup[:5])}")
    scored = sorted(docs, key=lambda d: _held_out_score(d.name, salt))
    cut = sum(_held_out_score(d.name, salt) < held_out for d in docs)
    cut = min(max(cut, 1), len(docs) - 1)
    def by_name(part):  # each split in name order: stable across runs and machines
        return tuple(sorted(part, key=lambda d: d.name))

    return Corpus(by_name(scored[cut:]), by_name(scored[:cut]), python or sys.version.split()[0])


def python_corpus(kinds: Sequence[str] = KINDS, held_out: float = HELD_OUT, max_chars: int | None = None) -> Corpus:
    """Python's documentation and standard-library sources, split by document."""
    return split_documents(python_documents(kinds, max_chars), held_out)


def token_blocks(docs: Sequence[Document], encode, length: int, sep_id: int) -> torch.Tensor:
    """The documents' tokens, each document followed by ``sep_id``, cut into rows of ``length``.

    ``encode``: text -> token ids (``TextTokenizer.encode``). Returns a LongTensor (N, length); the
    tail that does not fill a row is dropped. Raises when the documents hold fewer than ``length``
    tokens.
    """
    if length < 2:
        raise ValueError(f"length={length}: a sequence needs at least 2 tokens")
    ids: list[int] = []
    for d in docs:
        ids += encode(d.text)
        ids.append(sep_id)
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"{len(docs)} document(s) hold {len(ids)} tokens, fewer than one sequence of {length}: "
                         "give more text or a shorter length")
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)
