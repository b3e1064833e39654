"""The paper's networks: MLPs (UCI, Fashion-MNIST), a 2-layer LSTM language model (PTB), ResNet-18 (CIFAR-10)."""

from __future__ import annotations

import torch
from torch import nn

# Models whose populations train all members at once under torch.func.vmap; the others (cuDNN's LSTM has no
# batching rule, ResNet-18 is trained on a GPU one network at a time) run populations of one.
VMAPPABLE = frozenset({"mlp", "mlp_bn"})
# Models whose populations run through :mod:`onepass.stacked` (batched matmuls written out) instead of vmap.
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
