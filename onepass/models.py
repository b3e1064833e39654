"""The paper's networks: MLPs (UCI, Fashion-MNIST), a 2-layer LSTM language model (PTB), ResNet-18 (CIFAR-10)."""

from __future__ import annotations

import torch
from torch import nn

# Models whose populations train all members at once under torch.func.vmap; the others (cuDNN's LSTM has no
# batching rule, ResNet-18 is trained on a GPU one network at a time) run populations of one.
VMAPPABLE = frozenset({"mlp", "mlp_bn"})
# Models whose populations run through :func:`population_mlp` (batched matmuls written out) instead of vmap.
STACKED = frozenset({"mlp"})


class MLP(nn.Module):
    """inputs - hidden (ReLU) - outputs, optionally with BatchNorm after the hidden layer. With BatchNorm the
    hidden Linear has no bias (BatchNorm's own shift replaces it), as the paper's MultiLayerPerceptron
    (its models.py:31-42)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, batchnorm: bool = False):
        super().__init__()
        layers = [nn.Flatten(), nn.Linear(inputs, hidden, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(), nn.Linear(hidden, outputs)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def population_mlp(params, inputs: torch.Tensor, feature_dims: int) -> torch.Tensor:
    """The outputs [N, batch, outputs] of N stacked :class:`MLP` networks without BatchNorm: ``params`` are
    their stacked weights in ``named_parameters`` order (W1 [N, hidden, in], b1 [N, hidden], W2 [N, out,
    hidden], b2 [N, out]), ``inputs`` [N, batch, *features] (each member its batch) or [batch, *features]
    (one batch, shared), ``feature_dims`` the number of feature dimensions (flattened, as nn.Flatten does).

    The same arithmetic as ``vmap`` over the module in fewer passes over the hidden layer: the ReLU in place,
    the bias adds fused into ``baddbmm``, and with a shared batch the first bias folded into the matmul as
    the weight of a column of ones (the same outputs, bit for bit; no pass to add it, and its gradient comes
    out of the weight gradient's matmul instead of a sum over the rows: equal to float round-off)."""
    x, hidden = _hidden_layer(params, inputs, feature_dims)
    w2, b2 = params[2:]
    return torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))


def _hidden_layer(params, inputs: torch.Tensor, feature_dims: int, relu: bool = True) -> tuple:
    """(the first layer's input [N, batch, in (+1: the column of ones of a shared batch)], its hidden layer
    after the ReLU (before it, unless ``relu``)) of :func:`population_mlp`."""
    w1, b1 = params[:2]
    n = w1.shape[0]
    x = inputs.flatten(-feature_dims)
    if x.dim() == 2:
        x = torch.cat([x, x.new_ones(len(x), 1)], 1).expand(n, -1, -1)
        hidden = torch.bmm(x, torch.cat([w1, b1.unsqueeze(2)], 2).transpose(1, 2))
    else:
        hidden = torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2))
    return x, hidden.relu_() if relu else hidden


@torch.no_grad()
def population_mlp_grads(params, inputs: torch.Tensor, feature_dims: int, output_grad, output_hvp=None) -> tuple:
    """(losses [N], gradients list) of :func:`population_mlp`'s networks, backpropagation written out for the
    plain training step (no graph recorded): the products autograd takes, bit for bit, without its
    bookkeeping; for networks of one output (UCI) the first layer's products regrouped so that they read the
    ReLU's mask once (the same to round-off). ``output_grad(outputs) -> (losses [N], d(losses.sum())/d(outputs))``
    is the loss's part.

    With ``output_hvp(outputs, r) -> the loss's Hessian in the outputs times r``, also ``hvp(v)``: the Hessian
    of the summed losses at these weights times ``v`` (a list shaped like ``params``), by Pearlmutter's
    R-operator on the forward and backward passes kept here (for the Neumann series' products)."""
    w1, b1, w2, b2 = params
    x, hidden = _hidden_layer(params, inputs, feature_dims)
    out = torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))
    losses, d_out = output_grad(out)
    if w2.shape[1] == 1:   # one output: the first layer's products regrouped to read the ReLU's mask once
        inputs = w1.shape[2]
        x, mask = _with_ones(x, inputs), hidden.sign()     # hidden >= 0: its sign is the mask
        b = torch.bmm((x * d_out).transpose(1, 2), mask)   # B = (x d_out)^T M: [N, in + 1, hidden]
        g1 = (b * w2).transpose(1, 2)                      # [W1 b1]'s gradient: w_j B[k, j]
        grads = [g1[:, :, :inputs], g1[:, :, inputs], torch.bmm(d_out.transpose(1, 2), hidden), d_out.sum(1)]
        if output_hvp is None:
            return losses, grads
        return losses, grads, _one_output_hvp(x, hidden, mask, b, d_out, out, w1, w2, output_hvp)
    grads = _backward(x, hidden, d_out, w1, w2)
    if output_hvp is None:
        return losses, grads

    @torch.no_grad()
    def hvp(v) -> list:
        r_hidden = _hidden_layer(v, inputs, feature_dims, relu=False)[1]
        r_hidden = torch.ops.aten.threshold_backward(r_hidden, hidden, 0)    # the ReLU's mask is constant
        r_out = torch.baddbmm(v[3].unsqueeze(1), r_hidden, w2.transpose(1, 2))
        r_out.baddbmm_(hidden, v[2].transpose(1, 2))
        r_d_out = output_hvp(out, r_out)
        g_w2 = torch.bmm(r_d_out.transpose(1, 2), hidden).baddbmm_(d_out.transpose(1, 2), r_hidden)
        r_d_hidden = torch.bmm(r_d_out, w2).baddbmm_(d_out, v[2])
        return _first_layer(x, torch.ops.aten.threshold_backward(r_d_hidden, hidden, 0), w1) + \
            [g_w2, r_d_out.sum(1)]

    return losses, grads, hvp


def _with_ones(x, inputs: int):
    """The first layer's input with its column of ones (a shared batch has it already)."""
    return x if x.shape[2] > inputs else torch.cat([x, x.new_ones(x.shape[:2] + (1,))], 2)


def _one_output_hvp(x, hidden, mask, b, d_out, out, w1, w2, output_hvp):
    """:func:`population_mlp_grads`' ``hvp`` for networks of one output, the R-operator's products regrouped so
    that each reads the hidden layer's ReLU mask M and the hidden layer h twice, not 15 passes over them:
    with x the inputs (with the column of ones), V = [V1 c1] and w = W2[0] (per member),

        R(out) = rowsum(x . (M (w V))) + h v2 + c2,          R(W2) = R(d_out)^T h + rowsum(V . B^T),
        R([W1 b1])[j, k] = w_j A[k, j] + v2_j B[k, j],       A = (x R(d_out))^T M,  B = (x d_out)^T M,

    B (``b``) the same for every v: the gradient's."""
    inputs = w1.shape[2]
    x_t = x.transpose(1, 2)
    w = w2[:, 0]

    @torch.no_grad()
    def hvp(v) -> list:
        v1 = torch.cat([v[0], v[1].unsqueeze(2)], 2)                 # [N, hidden, in + 1]
        v2 = v[2][:, 0]
        r_out = (x * torch.bmm(mask, w.unsqueeze(2) * v1)).sum(2, keepdim=True)
        r_out.baddbmm_(hidden, v[2].transpose(1, 2)).add_(v[3].unsqueeze(1))
        r_d_out = output_hvp(out, r_out)
        a = torch.bmm(x_t * r_d_out.transpose(1, 2), mask)        # [N, in + 1, hidden]
        g1 = (a * w.unsqueeze(1)).add_(b * v2.unsqueeze(1)).transpose(1, 2)
        g_w2 = torch.bmm(r_d_out.transpose(1, 2), hidden).add_((v1 * b.transpose(1, 2)).sum(2).unsqueeze(1))
        return [g1[:, :, :inputs], g1[:, :, inputs], g_w2, r_d_out.sum(1)]

    return hvp


def _backward(x, hidden, d_out, w1, w2) -> list:
    """The gradients of W1, b1, W2, b2 from d(loss)/d(outputs) ``d_out`` (the first layer's input ``x`` and
    ``hidden`` after the ReLU, from :func:`_hidden_layer`)."""
    g_w2 = torch.bmm(d_out.transpose(1, 2), hidden)
    g_b2 = d_out.sum(1)
    d_hidden = torch.ops.aten.threshold_backward(torch.bmm(d_out, w2), hidden, 0)
    return _first_layer(x, d_hidden, w1) + [g_w2, g_b2]


def _first_layer(x, d_hidden, w1) -> list:
    """[gradient of W1, of b1] from d(loss)/d(the first layer's output, before the ReLU)."""
    g_in = torch.bmm(x.transpose(1, 2), d_hidden)     # [N, in (+1), hidden]
    if g_in.shape[1] > w1.shape[2]:                     # a shared batch: the bias's gradient in the last row
        return [g_in[:, :-1].transpose(1, 2), g_in[:, -1]]
    return [g_in.transpose(1, 2), d_hidden.sum(1)]


class LSTMLanguageModel(nn.Module):
    """Embedding - multi-layer LSTM - linear decoder over the vocabulary.

    ``forward(tokens, hidden)`` takes tokens of shape (sequence, batch) and returns logits of shape
    (sequence, batch, vocabulary) and the new hidden state, which the caller detaches between batches.
    Every layer keeps PyTorch's default initialisation, as in the paper's code: embedding N(0, 1), LSTM and
    decoder weights and biases U(-1/sqrt(hidden), 1/sqrt(hidden)).
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab_size)
        self.layers, self.hidden = layers, hidden

    def init_hidden(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.layers, batch, self.hidden)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(self, tokens: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]):
        out, hidden = self.lstm(self.embedding(tokens), hidden)
        return self.decoder(out), hidden


def resnet18(num_classes: int) -> nn.Module:
    """torchvision's ResNet-18, imported only here so that nothing else needs torchvision."""
    try:
        from torchvision.models import resnet18 as tv_resnet18
    except Exception as err:  # ImportError, or a torchvision built for another torch
        raise RuntimeError(
            "CIFAR-10's ResNet-18 needs torchvision matching your torch "
            f"(pip install torchvision; import failed: {err})") from err
    return tv_resnet18(num_classes=num_classes)


def build_model(settings: dict, input_shape: tuple, outputs: int) -> nn.Module:
    """The network named by ``settings['model']`` for inputs of ``input_shape`` and ``outputs`` outputs
    (classes, vocabulary size, or 1 for regression)."""
    name = settings["model"]
    if ":" in name:  # a user's module:function (onepass.user)
        from .user import build_model as build_user_model

        return build_user_model(name)
    if name in ("mlp", "mlp_bn"):
        inputs = 1
        for size in input_shape:
            inputs *= size
        return MLP(inputs, settings["hidden_units"], outputs, batchnorm=name == "mlp_bn")
    if name == "lstm":
        return LSTMLanguageModel(outputs, settings["embedding_dim"], settings["hidden_units"],
                                 settings["lstm_layers"])
    if name == "resnet18":
        return resnet18(outputs)
    raise ValueError(f"unknown model {name!r}")
