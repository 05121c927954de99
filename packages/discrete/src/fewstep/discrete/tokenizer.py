"""A byte-level BPE tokenizer trained locally (Hugging Face ``tokenizers``), plus the ids that
diffusion needs beyond the text's own tokens.

The BPE vocabulary covers every byte, so no text is ever unknown; the special ids (the absorbing
state ``[MASK]`` and the document separator ``[SEP]``) sit after the BPE ids and are never made
from text (a document that contains the string "[MASK]" stays text). Decoding an id outside the
vocabulary is an error that names it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

SPECIALS = ("[MASK]", "[SEP]")


class TextTokenizer:
    """Text <-> token ids: BPE ids [0, bpe_size), then ``mask_id`` and ``sep_id``."""

    def __init__(self, bpe):
        from tokenizers import Tokenizer

        if not isinstance(bpe, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(bpe).__name__}")
        self.bpe = bpe
        self.bpe_size = bpe.get_vocab_size()
        self.mask_id, self.sep_id = self.bpe_size, self.bpe_size + 1

    @property
    def vocab_size(self) -> int:
        """Every id a model sees: the BPE's and the specials."""
        return self.bpe_size + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.bpe.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], *, mask: str = "_", sep: str = "\n") -> str:
        """Ids -> text; a masked position reads ``mask`` and a separator ``sep``."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside this tokenizer's vocabulary of {self.vocab_size} "
                             f"({len(bad)} such id(s)); was the sequence made with another tokenizer?")
        out, run = [], []
        for i in ids + [-1]:
            if 0 <= i < self.bpe_size:
                run.append(i)
                continue
            if run:
                out.append(self.bpe.decode(run))
                run = []
            if i == self.mask_id:
                out.append(mask)
            elif i == self.sep_id:
                out.append(sep)
        return "".join(out)

    def to_json(self) -> str:
        return self.bpe.to_str()

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_str(text))
        except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception from Rust)
            raise ValueError(f"not a tokenizer JSON ({e})") from None

    def save(self, path: str | os.PathLike) -> Path:
        from fewstep.core.io import write_text_atomic

        path = Path(path)
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}")
        return cls.from_json(path.read_text())

    def describe(self) -> dict:
        return {"kind": "byte-level BPE (tokenizers)", "bpe_size": self.bpe_size, "vocab_size": self.vocab_size,
                "mask_id": self.mask_id, "sep_id": self.sep_id}


def train_tokenizer(texts: Sequence[str], vocab_size: int = 1024, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE of ``vocab_size`` ids (the 256 bytes included) learnt from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs more than its 256 byte ids")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no text to train a tokenizer on")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return TextTokenizer(bpe)

