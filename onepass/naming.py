"""Display names, order and colours of algorithms and datasets in tables and figures."""

from __future__ import annotations

# Algorithm config name -> label used in the paper's tables, in table order.
LABELS = {
    "Random": "Random",
    "Random_SteppedLR": "Random (xLR)",
    "Random_3Batched": "Random (3-batched)",
    "Random_Validation": "Random (validation)",
    "Lorraine": "Lorraine",
    "Baydin": "Baydin",
    "Ours_LR": "Ours (WD+LR)",
    "Ours_LR_Momentum": "Ours (WD+LR+M)",
    "Ours_HDLR_Momentum": "Ours (WD+HDLR+M)",
    "DiffThroughOpt": "Diff-through-Opt",
    "LongDiffThroughOpt_Standalone": "Long Diff-through-Opt (Standalone)",
    "LongDiffThroughOpt_Medium": "Long Diff-through-Opt (Medium)",
    "LongDiffThroughOpt_Full": "Long Diff-through-Opt (Full)",
    "BayesOpt": "Bayesian Optimisation",
    "ASHA": "ASHA",
    "ASHA_Ours": "ASHA (Ours)",
    "PBT": "PBT",
    "PBT_Ours": "PBT (Ours)",
}

# Black-box searches (python -m onepass.search; config/algorithms/*.yaml with `search`): a "run" is one
# repetition of a whole search, and its history is the best-so-far (by validation) test metric against
# the search's cumulative time and steps. tests/test_analysis.py keeps this in step with the configs.
SEARCHES = ("BayesOpt", "ASHA", "ASHA_Ours", "PBT", "PBT_Ours")

# "Random (3-batched)" is derived from Random_Validation runs, not trained itself.
DERIVED = {"Random_3Batched": "Random_Validation"}

# One fixed colour per algorithm, the same in every figure.
COLOURS = {
    "Random": "#7f7f7f",
    "Random_SteppedLR": "#bcbd22",
    "Random_3Batched": "#17becf",
    "Random_Validation": "#8c564b",
    "Lorraine": "#9467bd",
    "Baydin": "#e377c2",
    "Ours_LR": "#2ca02c",
    "Ours_LR_Momentum": "#1f77b4",
    "Ours_HDLR_Momentum": "#d62728",
    "DiffThroughOpt": "#ff7f0e",
    "LongDiffThroughOpt_Standalone": "#aec7e8",
    "LongDiffThroughOpt_Medium": "#ffbb78",
    "LongDiffThroughOpt_Full": "#98df8a",
    # the searches: dark tones, drawn dashed in the time comparison
    "BayesOpt": "#252525",
    "ASHA": "#843c39",
    "ASHA_Ours": "#7b4173",
    "PBT": "#5254a3",
    "PBT_Ours": "#637939",
}

DATASET_LABELS = {
    "uci_boston": "UCI Boston Housing",
    "uci_concrete": "UCI Concrete",
    "uci_energy": "UCI Energy",
    "uci_kin8nm": "UCI Kin8nm",
    "uci_naval": "UCI Naval",
    "uci_power": "UCI Power",
    "uci_wine": "UCI Wine",
    "uci_yacht": "UCI Yacht",
    "fashion_mnist": "Fashion-MNIST",
    "penn_treebank": "Penn Treebank",
    "cifar10": "CIFAR-10",
}

# The paper's final test metric per dataset family.
METRIC_NAMES = {
    "uci": "test MSE (unnormalised)",
    "fashion_mnist": "test cross-entropy",
    "penn_treebank": "test perplexity",
    "cifar10": "test cross-entropy",
}


def label(algorithm: str) -> str:
    """Table/figure label of an algorithm (its config name if unknown)."""
    return LABELS.get(algorithm, algorithm)


def is_search(algorithm: str) -> bool:
    """Whether an algorithm is a black-box search (see SEARCHES)."""
    return algorithm in SEARCHES


def colour(algorithm: str) -> str:
    """Fixed colour of an algorithm."""
    return COLOURS.get(algorithm, "#000000")


def order(algorithms) -> list:
    """Algorithms sorted in the paper's table order; unknown ones last, by name."""
    rank = {name: i for i, name in enumerate(LABELS)}
    return sorted(algorithms, key=lambda a: (rank.get(a, len(rank)), a))


def family(dataset: str) -> str:
    """Dataset family: uci | fashion_mnist | penn_treebank | cifar10."""
    return "uci" if dataset.startswith("uci_") else dataset


def dataset_label(dataset: str) -> str:
    """Human-readable dataset name."""
    return DATASET_LABELS.get(dataset, dataset)


def metric_name(dataset: str) -> str:
    """Name of the paper's table metric for a dataset."""
    return METRIC_NAMES.get(family(dataset), "test loss")
