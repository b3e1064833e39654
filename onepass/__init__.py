"""onepass: one-pass gradient-based hyperparameter optimisation by implicit differentiation.

Reimplements Clarke, Oldewage & Hernandez-Lobato, "Scalable One-Pass Optimisation of
High-Dimensional Weight-Update Hyperparameters by Implicit Differentiation" (ICLR 2022).
"""

from .version import __version__  # noqa: F401 (onepass.__version__)


def __getattr__(name):
    """``onepass.OnePassSGD``, the optimiser for one's own training loop, and ``onepass.schedule`` /
    ``onepass.write_tensorboard`` for its hyperparameters (imported on first use, so that ``import onepass``
    stays light for the workflow)."""
    if name == "OnePassSGD":
        from .optim import OnePassSGD

        return OnePassSGD
    if name in ("schedule", "write_tensorboard", "Schedule"):
        from . import optim_schedule

        return getattr(optim_schedule, name)
    raise AttributeError(f"module 'onepass' has no attribute {name!r}")
