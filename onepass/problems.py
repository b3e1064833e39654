"""A model on a dataset, for a population: every member's loss of stacked weights, batch streams, evaluation.

Weights and buffers (BatchNorm statistics) are stacked on a leading member dimension. The MLPs run every
member at once with ``torch.func.vmap`` over ``torch.func.functional_call``; models that vmap does not suit
(the LSTM, ResNet-18: see :data:`onepass.models.VMAPPABLE`) run populations of one, through the same
functions with the member dimension squeezed away.

Tasks: ``regression`` (MSE on normalised targets; the table metric is the unnormalised test MSE),
``classification`` (cross-entropy; accuracy), ``language_model`` (cross-entropy per token; perplexity).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .batches import BatchStream, SequenceStream
from .models import STACKED, VMAPPABLE, build_model
from .stacked import population_mlp, population_mlp_grads


def to_device(dataset, device):
    """Move every split of a loaded dataset to ``device`` (in place); returns the dataset."""
    for split in ("train", "valid", "test"):
        inputs, targets = getattr(dataset, split)
        setattr(dataset, split, (inputs.to(device), None if targets is None else targets.to(device)))
    return dataset


def outputs_of(dataset) -> int:
    """Network outputs a dataset needs: targets for regression, classes, or the vocabulary."""
    if dataset.task == "regression":
        return dataset.train[1].shape[-1]
    return dataset.vocab_size if dataset.task == "language_model" else dataset.num_classes


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """Batch statistics without updating running statistics, so that a loss is a pure function of the
    weights (as the hypergradients need)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def batchable(settings: dict, dataset, template: nn.Module | None = None) -> bool:
    """Whether populations of this network train all members at once (:data:`onepass.models.VMAPPABLE`; a
    user's network when ``torch.func`` can batch it, :func:`onepass.user.batchable`) or one at a time."""
    if ":" not in settings["model"]:
        return settings["model"] in VMAPPABLE
    from .user import batchable as user_batchable

    if template is None:
        template = build_model(settings, tuple(dataset.input_shape), outputs_of(dataset)).to(dataset.train[0].device)
        template.train()
    return user_batchable(template, dataset.train[0])


def _squeeze(tree):
    return torch.utils._pytree.tree_map(lambda t: t[0] if isinstance(t, torch.Tensor) else t, tree)


def _unsqueeze(tree):
    return torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0) if isinstance(t, torch.Tensor) else t, tree)


def log_softmax(out: torch.Tensor) -> torch.Tensor:
    """log softmax over the last dimension as ``out - logsumexp``: equal to ``F.log_softmax`` to float
    round-off, and 4x faster on the CPU for few classes (Fashion-MNIST's 10: 39 against 166 us for a
    population of 25 x 50 rows)."""
    return out - out.logsumexp(-1, keepdim=True)


class Problem:
    """The network of ``settings`` on ``dataset`` (already on ``device``), for populations of members."""

    def __init__(self, settings: dict, dataset, device: torch.device):
        self.settings, self.dataset, self.device = settings, dataset, device
        self.task = dataset.task
        self.template = self.build().to(device)
        self.template.train()
        self.names = [name for name, _ in self.template.named_parameters()]
        self.buffer_names = [name for name, _ in self.template.named_buffers()]
        self.vmapped = batchable(settings, dataset, self.template)
        # a plain MLP's population runs through its batched matmuls written out (vmap's numbers, to round-off)
        self.stacked = settings["model"] in STACKED and self.task != "language_model"

    def build(self) -> nn.Module:
        """A freshly initialised network (its weights drawn from torch's global generator)."""
        return build_model(self.settings, tuple(self.dataset.input_shape), outputs_of(self.dataset))

    def initial_state(self, seeds) -> tuple[list, list]:
        """Stacked weights and buffers of one freshly initialised network per seed (the network of seed s is
        the one ``torch.manual_seed(s)`` then :meth:`build` gives)."""
        if not self.vmapped and len(seeds) != 1:
            raise ValueError(f"model {self.settings['model']!r} runs populations of one, got {len(seeds)} members")
        nets = []
        for seed in seeds:
            torch.manual_seed(int(seed))
            nets.append(self.build())
        params = [torch.stack([dict(n.named_parameters())[k].detach() for n in nets]).to(self.device)
                  for k in self.names]
        buffers = [torch.stack([dict(n.named_buffers())[k].detach() for n in nets]).to(self.device)
                   for k in self.buffer_names]
        return params, buffers

    # ---- losses -------------------------------------------------------------------------------------
    def _forward_loss(self, forward, batch):
        if self.task == "language_model":
            inputs, targets, hidden = batch
            if hidden is None:
                hidden = self.template.init_hidden(inputs.shape[1], inputs.device)
            logits, hidden = forward(inputs, hidden)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), hidden
        inputs, targets = batch
        out = forward(inputs)
        if self.task == "regression":
            return F.mse_loss(out, targets), ()
        return F.cross_entropy(out, targets), ()

    def _member_loss(self, params, buffers, batch):
        state = {**dict(zip(self.names, params)), **dict(zip(self.buffer_names, buffers))}
        return self._forward_loss(lambda *args: functional_call(self.template, state, args), batch)

    def losses(self, params, buffers, batch, shared: bool, track_stats: bool = False):
        """Every member's training-mode loss on its batch: ([N] losses, aux), aux an LSTM's new hidden state
        (stacked) or an empty tuple. ``shared``: the batch has no member dimension (full batch, text).
        ``track_stats``: BatchNorm updates its running statistics (plain training steps); otherwise the loss
        is a pure function of the weights (hypergradients)."""
        if self.stacked:
            return self._stacked_losses(params, batch), ()
        context = contextlib.nullcontext() if track_stats else frozen_batchnorm_stats(self.template)
        with context:
            if self.vmapped:
                dims = None if shared else 0
                return vmap(self._member_loss, in_dims=(0, 0, dims))(tuple(params), tuple(buffers), batch)
            if not shared:
                batch = _squeeze(batch)
            elif self.task == "language_model":
                batch = (*batch[:2], None if batch[2] is None else _squeeze(batch[2]))
            loss, aux = self._member_loss(_squeeze(tuple(params)), _squeeze(tuple(buffers)), batch)
            return loss.unsqueeze(0), _unsqueeze(aux)

    def _stacked_losses(self, params, batch) -> torch.Tensor:
        """[N] losses of a plain MLP population (:func:`onepass.stacked.population_mlp`), each member's loss
        reduced as ``F.mse_loss``/``F.cross_entropy`` reduce one network's."""
        inputs, targets = batch
        out = population_mlp(params, inputs, len(self.dataset.input_shape))
        if self.task == "regression":
            return (out - targets).pow(2).mean((1, 2))
        n, rows = out.shape[:2]
        losses = F.cross_entropy(out.reshape(n * rows, -1), targets.expand(n, rows).reshape(-1), reduction="none")
        return losses.view(n, rows).mean(1)

    def stacked_grads(self, params, batch) -> tuple:
        """([N] losses, gradients list) of a plain MLP population's training step, without autograd
        (:func:`onepass.stacked.population_mlp_grads`): what ``torch.autograd.grad`` of the summed
        :meth:`losses` gives."""
        inputs, targets = batch
        return population_mlp_grads(params, inputs, len(self.dataset.input_shape),
                                    lambda out: self._output_grad(out, targets))

    def stacked_curvature(self, params, batch) -> tuple:
        """(losses, gradients, hvp) of a plain MLP population at ``params`` on ``batch``: :meth:`stacked_grads`
        and ``hvp(v)``, the Hessian of the summed losses times ``v`` (the products of the Neumann series)."""
        inputs, targets = batch
        return population_mlp_grads(params, inputs, len(self.dataset.input_shape),
                                    lambda out: self._output_grad(out, targets), self._output_hvp)

    def _output_hvp(self, out, r) -> torch.Tensor:
        """The Hessian of the summed losses in the outputs ``out`` times ``r``: MSE's 2 r / numel;
        cross-entropy's (softmax r - softmax (softmax . r)) / rows."""
        if self.task == "regression":
            return r * (2.0 / (out.shape[1] * out.shape[2]))
        p = log_softmax(out).exp_()
        pr = p * r
        return pr.sub_(p * pr.sum(-1, keepdim=True)).mul_(1.0 / out.shape[1])

    def _output_grad(self, out, targets) -> tuple:
        """(every member's loss, d(sum of the losses)/d(out)), each step as autograd takes it: MSE's
        2 (out - y) / numel; cross-entropy's (softmax - one-hot) / rows."""
        if self.task == "regression":
            diff = out - targets
            return diff.pow(2).mean((1, 2)), diff.mul_(2.0 / (out.shape[1] * out.shape[2]))
        n, rows = out.shape[:2]
        log_p = log_softmax(out)
        index = targets.expand(n, rows).unsqueeze(-1)
        losses = -log_p.gather(-1, index).squeeze(-1).mean(1)
        d_out = log_p.exp_().mul_(1.0 / rows)
        d_out.scatter_add_(-1, index, d_out.new_full(index.shape, -1.0 / rows))
        return losses, d_out

    def loss_function(self, buffers, shared: bool, track_stats: bool = False):
        """``loss(params, batch) -> ([N] losses, aux)`` with these buffers (for the hypergradients)."""
        return lambda params, batch: self.losses(params, buffers, batch, shared, track_stats)

    # ---- data ---------------------------------------------------------------------------------------
    def stream(self, split: str, seeds):
        """A batch stream over ``split`` ('train', 'valid' or 'train+valid') for members with these seeds."""
        ds, bs = self.dataset, self.settings["batch_size"]
        parts = [getattr(ds, name) for name in split.split("+")]
        if self.task == "language_model":
            tokens = torch.cat([p[0] for p in parts])
            return SequenceStream(tokens, bs or 1, self.settings["bptt"])
        inputs = torch.cat([p[0] for p in parts])
        targets = torch.cat([p[1] for p in parts])
        return BatchStream(inputs, targets, bs, seeds)

    # ---- evaluation ---------------------------------------------------------------------------------
    def _forward(self, params, buffers, x):
        state = {**dict(zip(self.names, params)), **dict(zip(self.buffer_names, buffers))}
        return functional_call(self.template, state, (x,))

    @torch.no_grad()
    def evaluate(self, params, buffers, split: str) -> dict:
        """Every member's mean loss over a whole split in eval mode, with the split's table metric: a dict of
        [N] tensors (loss, metric, accuracy for classification, perplexity for language models)."""
        self.template.eval()
        try:
            if self.task == "language_model":
                loss = self._evaluate_text(params, buffers, getattr(self.dataset, split)[0])
                return {"loss": loss, "perplexity": torch.exp(loss.clamp(max=700.0)),
                        "metric": torch.exp(loss.clamp(max=700.0))}
            return self._evaluate_supervised(params, buffers, *getattr(self.dataset, split))
        finally:
            self.template.train()

    def _outputs(self, params, buffers, x):
        if self.vmapped:
            return vmap(self._forward, in_dims=(0, 0, None))(tuple(params), tuple(buffers), x)
        return self._forward(_squeeze(tuple(params)), _squeeze(tuple(buffers)), x).unsqueeze(0)

    def _evaluate_supervised(self, params, buffers, inputs, targets) -> dict:
        size, n = self.settings["eval_batch_size"], params[0].shape[0]
        total = torch.zeros(n, dtype=torch.float64, device=self.device)
        correct = torch.zeros(n, dtype=torch.float64, device=self.device)
        for start in range(0, len(inputs), size):
            out = self._outputs(params, buffers, inputs[start:start + size])
            y = targets[start:start + size]
            if self.task == "regression":
                total += (out - y).pow(2).reshape(n, -1).sum(1).double() / y.shape[-1]
            else:
                losses = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.repeat(n), reduction="none")
                total += losses.reshape(n, -1).sum(1).double()
                correct += (out.argmax(-1) == y).sum(1).double()
        loss = total / len(inputs)
        if self.task == "regression":
            return {"loss": loss, "metric": loss * float(self.dataset.target_scale) ** 2}
        return {"loss": loss, "metric": loss, "accuracy": correct / len(inputs)}

    def _evaluate_text(self, params, buffers, tokens) -> torch.Tensor:
        stream = SequenceStream(tokens, self.settings["eval_batch_size"], self.settings["bptt"])
        member = _squeeze(tuple(params)), _squeeze(tuple(buffers))
        total, count = 0.0, 0
        while stream.position < len(stream.data) - 1:
            inputs, targets, hidden = stream.next()
            loss, hidden = self._member_loss(*member, (inputs, targets, hidden))
            stream.carry(hidden)
            total += loss.item() * targets.numel()
            count += targets.numel()
        return torch.tensor([total / count], dtype=torch.float64, device=self.device)
