"""The hypergradient-quality study (the paper's Figure 8): how near the paper's approximate hypergradient
comes to the exact one.

In every cell (T, K <= T) of onepass.appendix's grid, a population of the paper's method (K Neumann terms,
T weight steps per hyperparameter step) takes its first hyperparameter step; beside it, the exact
hypergradient through the same last K weight steps, from the same weights, on the same batches and the same
validation batch (Population.step_with_reference). The paper compared the first hyperparameter updates of
matched runs; comparing the hypergradients themselves leaves the hyperparameter optimiser out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from . import appendix, catalog, study
from .data import load
from .population import Member, Population
from .problems import to_device
from .settings import ConfigError, load_settings
from .train import resolve_device

MEMBER_COLUMNS = ("update_interval", "lookback", "seed", "hyperparameter", "ours", "exact", "relative_error")
SUMMARY_COLUMNS = ("update_interval", "lookback", "hyperparameter", "members", "mean_relative_error",
                   "median_relative_error", "same_sign")


def relative_error(ours: float, exact: float) -> float:
    """|exact - ours| / |exact| (NaN where the exact hypergradient is zero or not finite)."""
    if not math.isfinite(exact) or exact == 0 or not math.isfinite(ours):
        return math.nan
    return abs(exact - ours) / abs(exact)


def compare(config: dict, data_dir, device: str = "cpu") -> list[dict]:
    """Every member's hypergradients, ours and exact, in every cell of the quality grid."""
    s = appendix.spec(config, appendix.QUALITY)
    dataset, algorithm = s["dataset"], s["algorithm"]
    dev = resolve_device(device)
    members = [Member(**study.member_of(config, dataset, algorithm, seed)) for seed in range(s["initialisations"])]
    data, rows = None, []
    for T, K in appendix.quality_cells(config):
        settings = load_settings(dataset, algorithm, appendix.quality_overrides(config, T, K))
        if data is None:
            data = to_device(load(catalog.dataset(dataset).base, data_dir, settings["preprocessing"]), dev)
        population = Population(settings, data, members, dev)
        out = population.step_with_reference()
        alive = population.alive.tolist()
        for name in out["neumann"]:
            ours, exact = out["neumann"][name].tolist(), out["exact"][name].tolist()
            for member, a, b, ok in zip(members, ours, exact, alive):
                rows.append({"update_interval": T, "lookback": K, "seed": member.seed, "hyperparameter": name,
                             "ours": a if ok else math.nan, "exact": b if ok else math.nan,
                             "relative_error": relative_error(a, b) if ok else math.nan})
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per cell and hyperparameter: the mean relative error over members (the paper's statistic, NaNs
    left out), its median, and the fraction of members whose two hypergradients share their sign."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["update_interval"], row["lookback"], row["hyperparameter"]), []).append(row)
    out = []
    for (T, K, name), group in groups.items():
        errors = [r["relative_error"] for r in group if math.isfinite(r["relative_error"])]
        signs = [(r["ours"] > 0) == (r["exact"] > 0) for r in group if math.isfinite(r["relative_error"])]
        out.append({"update_interval": T, "lookback": K, "hyperparameter": name, "members": len(group),
                    "mean_relative_error": sum(errors) / len(errors) if errors else math.nan,
                    "median_relative_error": appendix.nanmedian(errors),
                    "same_sign": sum(signs) / len(signs) if signs else math.nan})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m onepass.quality", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the study config as JSON")
    p.add_argument("--data-dir", required=True, help="where `python -m onepass.data prepare` wrote the data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--members", required=True, help="output: every member's hypergradients (TSV)")
    p.add_argument("--summary", required=True, help="output: per cell and hyperparameter (TSV)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = study.apply_defaults(study.normalise(json.loads(args.config)))
        rows = compare(config, args.data_dir, args.device)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    appendix.write_table(args.members, rows, MEMBER_COLUMNS)
    appendix.write_table(args.summary, summary, SUMMARY_COLUMNS)
    print(f"{len(summary)} cells x hyperparameters from {len(rows)} member hypergradients -> {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
