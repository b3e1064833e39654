"""A model on a dataset: its pure loss function, its in-place training loss, its batch streams, evaluation.

Tasks: ``regression`` (MSE on normalised targets; the table metric is the unnormalised test MSE),
``classification`` (cross-entropy; accuracy), ``language_model`` (cross-entropy per token; perplexity).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .batches import BatchStream, SequenceStream


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """Batch statistics without updating running statistics, so that a loss can be called inside
    ``torch.func`` transforms (which forbid in-place updates of captured buffers)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


class Problem:
    """``model`` trained on ``dataset`` (an :class:`onepass.data.Dataset` already on the right device)."""

    def __init__(self, model: nn.Module, dataset, settings: dict):
        self.model, self.dataset, self.settings = model, dataset, settings
        self.task = dataset.task
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]

    # ---- losses -------------------------------------------------------------------------------------
    def _forward_loss(self, forward, batch):
        if self.task == "language_model":
            inputs, targets, hidden = batch
            if hidden is None:
                hidden = self.model.init_hidden(inputs.shape[1], inputs.device)
            logits, hidden = forward(inputs, hidden)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), hidden
        inputs, targets = batch
        out = forward(inputs)
        if self.task == "regression":
            return F.mse_loss(out, targets), ()
        return F.cross_entropy(out, targets), ()

    def loss_aux(self, params, batch):
        """Pure training-mode loss of weights ``params`` (a tuple in ``named_parameters`` order) on
        ``batch``; returns (loss, aux) where aux is an LSTM's new hidden state (else an empty tuple)."""
        state = dict(zip(self.names, params))
        state.update(self.model.named_buffers())

        def forward(*args):
            return torch.func.functional_call(self.model, state, args)

        with frozen_batchnorm_stats(self.model):
            return self._forward_loss(forward, batch)

    def loss(self, params, batch):
        """Pure training-mode loss (no aux)."""
        return self.loss_aux(params, batch)[0]

    def step_loss(self, batch):
        """Loss of the module's own weights in training mode (updates BatchNorm statistics)."""
        return self._forward_loss(self.model, batch)

    # ---- data ---------------------------------------------------------------------------------------
    def stream(self, split: str, seed: int):
        """A batch stream over ``split`` ('train', 'valid' or 'train+valid')."""
        ds, bs = self.dataset, self.settings["batch_size"]
        parts = [getattr(ds, name) for name in split.split("+")]
        if self.task == "language_model":
            tokens = torch.cat([p[0] for p in parts])
            return SequenceStream(tokens, bs or 1, self.settings["bptt"])
        inputs = torch.cat([p[0] for p in parts])
        targets = torch.cat([p[1] for p in parts])
        return BatchStream(inputs, targets, bs, seed)

    # ---- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """Mean loss over a whole split in eval mode, with the split's table metric."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self.task == "language_model":
                loss = self._evaluate_text(getattr(self.dataset, split)[0])
                out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
                out["metric"] = out["perplexity"]
                return out
            return self._evaluate_supervised(*getattr(self.dataset, split))
        finally:
            self.model.train(was_training)

    def _evaluate_supervised(self, inputs, targets) -> dict:
        size = self.settings["eval_batch_size"]
        total, correct = 0.0, 0
        for start in range(0, len(inputs), size):
            out = self.model(inputs[start:start + size])
            y = targets[start:start + size]
            if self.task == "regression":
                total += F.mse_loss(out, y, reduction="sum").item() / y.shape[-1]
            else:
                total += F.cross_entropy(out, y, reduction="sum").item()
                correct += (out.argmax(-1) == y).sum().item()
        loss = total / len(inputs)
        if self.task == "regression":
            return {"loss": loss, "metric": loss * float(self.dataset.target_scale) ** 2}
        return {"loss": loss, "metric": loss, "accuracy": correct / len(inputs)}

    def _evaluate_text(self, tokens) -> float:
        stream = SequenceStream(tokens, self.settings["eval_batch_size"], self.settings["bptt"])
        total, count = 0.0, 0
        while stream.position < len(stream.data) - 1:
            inputs, targets, hidden = stream.next()
            loss, hidden = self._forward_loss(self.model, (inputs, targets, hidden))
            stream.carry(hidden)
            total += loss.item() * targets.numel()
            count += targets.numel()
        return total / count
