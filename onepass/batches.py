"""Deterministic, checkpointable batch streams.

Every stream has ``next()`` (the next batch), ``carry(aux)`` (state a model passes from one batch to the
next: an LSTM's hidden state) and ``state_dict``/``load_state_dict`` so that a resumed run sees exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import torch


class BatchStream:
    """Minibatches of (inputs, targets) without replacement, reshuffled every epoch by a seeded generator;
    the whole split every time when ``batch_size`` is None or not smaller than the split."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int | None, seed: int):
        self.inputs, self.targets = inputs, targets
        n = len(inputs)
        self.batch_size = None if batch_size is None or batch_size >= n else batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def next(self):
        if self.batch_size is None:
            return self.inputs, self.targets
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.inputs), generator=self.generator)
            self.position = 0
        index = self.order[self.position:self.position + self.batch_size].to(self.inputs.device)
        self.position += self.batch_size
        return self.inputs[index], self.targets[index]

    def carry(self, aux) -> None:
        """Supervised batches carry nothing from one step to the next."""

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


def batchify(tokens: torch.Tensor, streams: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``streams`` parallel columns: shape (length, streams)."""
    length = len(tokens) // streams
    if length < 2:
        raise ValueError(f"token stream of {len(tokens)} tokens is too short for {streams} parallel sequences")
    return tokens[: length * streams].view(streams, length).t().contiguous()


class SequenceStream:
    """Consecutive BPTT windows (inputs, targets, hidden) over batchified text, wrapping at the end.

    The hidden state passed with each window is the detached final state of the previous window
    (``carry``), reset to ``None`` (zeros) at the start of every pass over the text."""

    def __init__(self, tokens: torch.Tensor, streams: int, bptt: int):
        self.data = batchify(tokens, streams)
        self.bptt = bptt
        self.position = 0
        self.hidden = None

    def next(self):
        if self.position >= len(self.data) - 1:
            self.position, self.hidden = 0, None
        length = min(self.bptt, len(self.data) - 1 - self.position)
        start = self.position
        self.position += length
        return self.data[start:start + length], self.data[start + 1:start + 1 + length], self.hidden

    def carry(self, hidden) -> None:
        self.hidden = tuple(h.detach() for h in hidden)

    def state_dict(self) -> dict:
        return {"position": self.position, "hidden": self.hidden}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.hidden = state["position"], state["hidden"]
