"""A plain MLP population (:class:`onepass.models.MLP` without BatchNorm, N members stacked) as batched matmuls
written out: the forward pass, the plain step's backpropagation and the Neumann series' Hessian-vector
products, without ``vmap`` or autograd's bookkeeping.

``params`` are the members' stacked weights in ``named_parameters`` order (W1 [N, hidden, in], b1 [N, hidden],
W2 [N, out, hidden], b2 [N, out]); ``inputs`` are [N, batch, *features] (each member its batch) or [batch,
*features] (one batch, shared), with ``feature_dims`` feature dimensions (flattened, as nn.Flatten does).
"""

from __future__ import annotations

import torch

# the latest shared batches' inputs with their column of ones (see :func:`shared_with_ones`)
_WITH_ONES: dict = {}


def shared_with_ones(inputs: torch.Tensor, feature_dims: int, transposed: bool = False) -> torch.Tensor:
    """A shared batch's flattened inputs with a column of ones appended, x [batch, in + 1] (``transposed``:
    x^T [in + 1, batch], contiguous), so that the first layer's bias is the weight of that column. Each is
    made once per input tensor, when first asked for (a full-batch run passes the same tensor every step),
    and remade if the tensor changes in place."""
    hit = _WITH_ONES.get(id(inputs))
    if hit is None or hit["inputs"] is not inputs or hit["version"] != inputs._version:
        x = inputs.flatten(-feature_dims)
        if len(_WITH_ONES) >= 8:
            _WITH_ONES.clear()
        hit = _WITH_ONES[id(inputs)] = {"inputs": inputs, "version": inputs._version,
                                        False: torch.cat([x, x.new_ones(len(x), 1)], 1)}
    if transposed not in hit:
        hit[True] = hit[False].t().contiguous()
    return hit[transposed]


def population_mlp(params, inputs: torch.Tensor, feature_dims: int) -> torch.Tensor:
    """The outputs [N, batch, outputs] of the N networks.

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
    if inputs.dim() == feature_dims + 1:   # one batch, shared
        x = shared_with_ones(inputs, feature_dims).expand(n, -1, -1)
        hidden = torch.bmm(x, torch.cat([w1, b1.unsqueeze(2)], 2).transpose(1, 2))
    else:
        x = inputs.flatten(-feature_dims)
        hidden = torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2))
    return x, hidden.relu_() if relu else hidden


@torch.no_grad()
def population_mlp_grads(params, inputs: torch.Tensor, feature_dims: int, output_grad, output_hvp=None) -> tuple:
    """(losses [N], gradients list) of :func:`population_mlp`'s networks, backpropagation written out for the
    plain training step (no graph recorded): the products autograd takes, without its bookkeeping (networks
    of one output, UCI's, take :func:`_one_output_grads`). ``output_grad(outputs) -> (losses [N],
    d(losses.sum())/d(outputs))`` is the loss's part.

    With ``output_hvp(outputs, r) -> the loss's Hessian in the outputs times r``, also ``hvp(v)``: the Hessian
    of the summed losses at these weights times ``v`` (a list shaped like ``params``), by Pearlmutter's
    R-operator on the forward and backward passes kept here (for the Neumann series' products)."""
    w1, b1, w2, b2 = params
    if w2.shape[1] == 1:
        return _one_output_grads(params, inputs, feature_dims, output_grad, output_hvp)
    x, hidden = _hidden_layer(params, inputs, feature_dims)
    out = torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))
    losses, d_out = output_grad(out)
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


def _one_output_grads(params, inputs: torch.Tensor, feature_dims: int, output_grad, output_hvp) -> tuple:
    """:func:`population_mlp_grads` for networks of one output, through the ReLU's mask alone.

    With x the inputs with their column of ones, U = [W1 b1] (so that the first layer's output is U x^T),
    M = (U x^T > 0) the ReLU's mask (kept as [N, hidden, batch]), w = W2[0] and d = d(loss)/d(out) (per
    member), the hidden layer h = M . (U x^T) never needs to be formed:

        out = rowsum(x . (M^T (w . U))) + b2,      B = M (x . d)   ([N, hidden, in + 1]),
        d[W1 b1] = w . B,     dW2 = h d = rowsum(U . B),     db2 = sum(d),

    so a step makes one pass over the hidden layer's size to build M (in place) and two products that read
    it (not ReLU, mask, output and gradient passes over h). The R-operator's products the same way, with V =
    [V1 c1], v2 = V2[0] and R(d) = the loss's Hessian in the outputs times R(out):

        R(out) = rowsum(x . (M^T (w . V + v2 . U))) + c2,          A = M (x . R(d)),
        R([W1 b1]) = w . A + v2 . B,      R(W2) = rowsum(U . A + V . B),      R(b2) = sum(R(d)).

    The same numbers as autograd through the module to round-off (tests/test_stacked_mlp.py)."""
    w1, b1, w2, b2 = params
    n, inputs_n = w1.shape[0], w1.shape[2]
    if inputs.dim() == feature_dims + 1:   # one batch, shared
        x, x_t = (shared_with_ones(inputs, feature_dims, t).expand(n, -1, -1) for t in (False, True))
    else:
        x = inputs.flatten(-feature_dims)
        x = torch.cat([x, x.new_ones(x.shape[:2] + (1,))], 2)
        x_t = x.transpose(1, 2)
    u = torch.cat([w1, b1.unsqueeze(2)], 2)                    # [N, hidden, in + 1]
    mask = torch.bmm(u, x_t).gt_(0)                            # M: [N, hidden, batch], 1.0 where the ReLU passes
    w = w2.transpose(1, 2)                                     # [N, hidden, 1]

    def through_mask(z):   # rowsum(x . (M^T z)) as [N, 1, batch]: for one output the memory of [N, batch, 1]
        return torch.bmm(z.transpose(1, 2), mask).mul_(x_t).sum(1, keepdim=True)

    out = through_mask(w * u).add_(b2.unsqueeze(2)).view(n, -1, 1)
    losses, d_out = output_grad(out)
    b = torch.bmm(mask, x * d_out)
    grads = _split(b * w, inputs_n) + [(u * b).sum(2).unsqueeze(1), d_out.sum(1)]
    if output_hvp is None:
        return losses, grads

    @torch.no_grad()
    def hvp(v) -> list:
        v1 = torch.cat([v[0], v[1].unsqueeze(2)], 2)          # [N, hidden, in + 1]
        v2 = v[2].transpose(1, 2)                              # [N, hidden, 1]
        r_out = through_mask((w * v1).add_(v2 * u)).add_(v[3].unsqueeze(2))
        r_d_out = output_hvp(out, r_out.view(n, -1, 1))
        a = torch.bmm(mask, x * r_d_out)
        r_w2 = (u * a).add_(v1 * b).sum(2).unsqueeze(1)
        return _split(a.mul_(w).add_(b * v2), inputs_n) + [r_w2, r_d_out.sum(1)]

    return losses, grads, hvp


def _split(g, inputs: int) -> list:
    """[W1's gradient, b1's] from [W1 b1]'s [N, hidden, in + 1]."""
    return [g[:, :, :inputs], g[:, :, inputs]]


def _backward(x, hidden, d_out, w1, w2) -> list:
    """The gradients of W1, b1, W2, b2 from d(loss)/d(outputs) ``d_out`` (the first layer's input ``x`` and
    ``hidden`` after the ReLU, from :func:`_hidden_layer`)."""
    g_w2 = torch.bmm(d_out.transpose(1, 2), hidden)
    g_b2 = d_out.sum(1)
    d_hidden = torch.ops.aten.threshold_backward(torch.bmm(d_out, w2), hidden, 0)
    return _first_layer(x, d_hidden, w1) + [g_w2, g_b2]


def _first_layer(x, d_hidden, w1) -> list:
    """[gradient of W1, of b1] from d(loss)/d(the first layer's output, before the ReLU), each in its weight's
    own layout (a transposed gradient would make the SGD step's element-wise passes strided: about 1.6x
    slower on Fashion-MNIST's first layer)."""
    g_in = torch.bmm(d_hidden.transpose(1, 2), x)     # [N, hidden, in (+1)]
    if g_in.shape[2] > w1.shape[2]:                     # a shared batch: the bias's gradient in the last column
        return _split(g_in, w1.shape[2])
    return [g_in, d_hidden.sum(1)]
