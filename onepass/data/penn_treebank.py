"""Preparing Penn Treebank (``ptb.{train,valid,test}.txt``, members of ``simple-examples.tgz``); the same
for both choices of ``preprocessing``.

``<eos>`` is appended to every line; the vocabulary (at most ``data.vocabulary`` of the catalogue entry,
10,000 tokens) is built from the training text, sorted by frequency (descending) then token; words outside
it map to ``<unk>``. The study's validation/test are the official valid/test texts. Streams are 1-D int64.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .. import catalog
from .fileformat import SPLITS
from .sources import DataError

EOS, UNK = "<eos>", "<unk>"

def _tokenise(path: Path) -> list[str]:
    """Whitespace tokens of a text file, with ``<eos>`` after every line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    return [token for line in text.splitlines() for token in line.split() + [EOS]]


def _build_vocab(tokens: list[str], size: int) -> list[str]:
    """At most ``size`` tokens, by frequency (descending) then token; ``<unk>`` kept if cut."""
    ranked = sorted(Counter(tokens).items(), key=lambda item: (-item[1], item[0]))
    vocab = [token for token, _ in ranked[:size]]
    if len(ranked) > size and UNK not in vocab:
        vocab[-1] = UNK
    return vocab


def _encode(tokens: list[str], index: dict[str, int], where: str) -> torch.Tensor:
    """Token ids (int64); out-of-vocabulary words become ``<unk>`` (an error if there is none)."""
    unk = index.get(UNK)
    ids = [index.get(token, unk) for token in tokens]
    if unk is None and None in ids:
        raise DataError(f"{where}: word {tokens[ids.index(None)]!r} is not in the training vocabulary")
    return torch.tensor(ids, dtype=torch.int64)


def prepare_penn_treebank(name: str, raw: dict[str, Path]) -> dict:
    """The prepared content of Penn Treebank from its three texts ``{file name: path}``."""
    tokens = {s: _tokenise(raw[f"ptb.{s}.txt"]) for s in SPLITS}
    vocab = _build_vocab(tokens["train"], catalog.dataset(name).data["vocabulary"])
    index = {token: i for i, token in enumerate(vocab)}
    streams = {s: _encode(tokens[s], index, str(raw[f"ptb.{s}.txt"])) for s in SPLITS}
    return {"streams": streams, "inputs_encoding": "tokens", "input_shape": [], "vocab": vocab,
            "vocab_size": len(vocab)}
