"""Deterministic, checkpointable batch streams for a population of members.

Every stream has ``next()`` (the next batch of every member), ``carry(aux)`` (state a model passes from one
batch to the next: an LSTM's hidden state) and ``state_dict``/``load_state_dict`` so that a resumed run sees
exactly the batches an uninterrupted run would. A member's batches depend on its own seed only, so member i
of a population sees the batches of a population of one with the same seed.
"""

from __future__ import annotations

import torch


class BatchStream:
    """Minibatches of (inputs, targets) without replacement, every member reshuffling every epoch with its
    own seeded generator: inputs of shape [N, batch, ...]. When ``batch_size`` is None or not smaller than the
    split, every member gets the whole split, shared (no member dimension)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int | None, seeds: list[int]):
        self.inputs, self.targets = inputs, targets
        n = len(inputs)
        self.batch_size = None if batch_size is None or batch_size >= n else batch_size
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.order = torch.empty(len(seeds), 0, dtype=torch.long)
        self.position = 0

    @property
    def shared(self) -> bool:
        """Whether every member gets the same batch (full batch)."""
        return self.batch_size is None

    def next(self):
        if self.batch_size is None:
            return self.inputs, self.targets
        if self.position + self.batch_size > self.order.shape[1]:
            n = len(self.inputs)
            self.order = torch.stack([torch.randperm(n, generator=g) for g in self.generators])
            self.position = 0
        index = self.order[:, self.position:self.position + self.batch_size].to(self.inputs.device)
        self.position += self.batch_size
        flat = index.flatten()   # index_select: the same rows as self.inputs[index], gathered faster
        return tuple(t.index_select(0, flat).view(index.shape + t.shape[1:]) for t in (self.inputs, self.targets))

    def carry(self, aux) -> None:
        """Supervised batches carry nothing from one step to the next."""

    def state_dict(self) -> dict:
        return {"generators": [g.get_state() for g in self.generators], "order": self.order,
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        self.order, self.position = state["order"], state["position"]


def batchify(tokens: torch.Tensor, streams: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``streams`` parallel columns: shape (length, streams)."""
    length = len(tokens) // streams
    if length < 2:
        raise ValueError(f"token stream of {len(tokens)} tokens is too short for {streams} parallel sequences")
    return tokens[: length * streams].view(streams, length).t().contiguous()


class SequenceStream:
    """Consecutive BPTT windows (inputs, targets, hidden) over batchified text, wrapping at the end; the
    windows are the same for every member, the hidden state is each member's own.

    The hidden state passed with each window is the detached final state of the previous window
    (``carry``), reset to ``None`` (zeros) at the start of every pass over the text."""

    shared = True

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
