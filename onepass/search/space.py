"""The search space of the black-box searches: log10 lr, log10 weight decay and momentum, each in the bounds
of its search setting."""

from __future__ import annotations

import random

SPACE_KEYS = {"lr": "search_log10_lr", "weight_decay": "search_log10_weight_decay", "momentum": "search_momentum"}


def space_point(settings: dict, rng: random.Random) -> dict:
    """One point drawn uniformly from the search space (log-uniform lr and weight decay)."""
    lo, hi = settings["search_log10_lr"]
    lr = 10.0 ** rng.uniform(lo, hi)
    lo, hi = settings["search_log10_weight_decay"]
    wd = 10.0 ** rng.uniform(lo, hi)
    return {"lr": lr, "weight_decay": wd, "momentum": rng.uniform(*settings["search_momentum"])}
