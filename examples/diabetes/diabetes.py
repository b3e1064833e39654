"""A problem of one's own for onepass: scikit-learn's diabetes data (442 patients, 10 features, disease
progression after a year) and a small network of the user's own.

The dataset YAML beside this file (datasets/diabetes.yaml) names these two functions as
``diabetes:splits`` and ``diabetes:network``; onepass imports this module from the YAML's ``path``.
"""

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from torch import nn

SIZES = (300, 70, 72)  # training, validation, test rows


def splits():
    """(train, validation, test), each (inputs, targets): the rows in a fixed random order, inputs and
    targets standardised with the training split's mean and standard deviation."""
    x, y = load_diabetes(return_X_y=True)
    order = np.random.RandomState(0).permutation(len(x))
    x, y = x[order], y[order]
    cut = np.cumsum(SIZES)[:-1]
    mean, std = x[: SIZES[0]].mean(0), x[: SIZES[0]].std(0)
    y_mean, y_std = y[: SIZES[0]].mean(), y[: SIZES[0]].std()
    x, y = (x - mean) / std, (y - y_mean) / y_std
    return tuple((torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
                 for a, b in zip(np.split(x, cut), np.split(y, cut)))


class Network(nn.Module):
    """10 inputs - 32 tanh - 32 tanh - 1, with a linear shortcut from the inputs to the output."""

    def __init__(self, inputs: int = 10, hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, 1))
        self.shortcut = nn.Linear(inputs, 1, bias=False)

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


def network():
    """A fresh network (its weights from torch's global generator, which onepass seeds per member)."""
    return Network()
