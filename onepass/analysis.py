"""Population analysis of a study: collect runs, then hand over to tables, figures and pages.

CLI (one sub-command per pipeline stage)::

    python -m onepass.analysis collect --dataset D --runs-dir results/runs/D \
        --algorithms A B --seeds N [--repetitions A=M ...] --out results/tables/D/runs.tsv
    python -m onepass.analysis summary --runs results/tables/D/runs.tsv --out summary.tsv
    python -m onepass.analysis paper-tables --summaries S1.tsv S2.tsv --markdown M.md --tsv T.tsv
    python -m onepass.analysis figure --kind edf --runs runs.tsv --runs-dir results/runs/D --out f.png f.svg
    python -m onepass.analysis page --dataset D --runs runs.tsv --summary summary.tsv \
        --sweep-summary sweep.tsv --figures F1.png F2.png --runs-dir results/runs/D --out D.html
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd

# metrics.json fields copied into runs.tsv, in this order.
FIELDS = [
    "init_lr", "init_weight_decay", "init_momentum",
    "final_lr", "final_weight_decay", "final_momentum",
    "train_loss", "valid_loss", "test_loss", "test_metric",
    "test_mse_unnormalised", "test_accuracy", "test_perplexity",
    "weight_steps", "hyperparameter_steps", "wall_time_s", "device", "slurm_job_id",
]
STATUSES = ("done", "diverged", "missing")


def run_dir(runs_dir, algorithm: str, seed: int) -> Path:
    """Directory of one run inside a dataset's runs directory."""
    return Path(runs_dir) / algorithm / f"seed{seed}"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_run(path: Path) -> dict:
    """One row of runs.tsv from a run's metrics.json (status ``missing`` if absent)."""
    if not path.exists():
        return {"status": "missing", "diverged": None}
    metrics = json.loads(path.read_text())
    row = {k: metrics.get(k) for k in FIELDS}
    diverged = bool(metrics.get("diverged")) or not _finite(metrics.get("test_metric"))
    row["status"] = "diverged" if diverged else "done"
    row["diverged"] = diverged
    settings = metrics.get("settings") or {}
    if "lr_step_factor" in settings and metrics.get("algorithm") == "Random_SteppedLR":
        row["lr_step_factor"] = settings["lr_step_factor"]
    return row


def collect(dataset: str, runs_dir, algorithms, seeds, repetitions=None) -> pd.DataFrame:
    """One row per (algorithm, seed) of a dataset, runs that are absent marked missing.

    ``repetitions`` maps an algorithm to its number of seeds (the first that many of ``seeds``):
    a black-box search runs fewer repetitions than the dataset has initialisations, and the
    seeds it does not run are not rows (not missing)."""
    repetitions = repetitions or {}
    unknown = sorted(set(repetitions) - set(algorithms))
    if unknown:
        raise ValueError(f"repetitions given for algorithms not collected: {', '.join(unknown)}")
    seeds = list(seeds)
    rows = []
    for algorithm in algorithms:
        for seed in seeds[:repetitions.get(algorithm, len(seeds))]:
            path = run_dir(runs_dir, algorithm, seed) / "metrics.json"
            rows.append({"dataset": dataset, "algorithm": algorithm, "seed": seed,
                         **read_run(path)})
    cols = ["dataset", "algorithm", "seed", "status", "diverged", *FIELDS]
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in cols]
    return frame.reindex(columns=cols + extra)


def status_counts(runs: pd.DataFrame) -> dict:
    """Number of runs per status (done, diverged, missing) and in total."""
    counts = {s: int((runs["status"] == s).sum()) for s in STATUSES}
    counts["total"] = len(runs)
    return counts


def status_line(runs: pd.DataFrame) -> str:
    """One line saying how many runs are done, diverged and missing."""
    c = status_counts(runs)
    return (f"# status: {c['done']} done, {c['diverged']} diverged, "
            f"{c['missing']} missing of {c['total']} runs")


def write_runs(runs: pd.DataFrame, path) -> None:
    """Write runs.tsv: the status line, then one tab-separated row per run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(status_line(runs) + "\n")
        runs.to_csv(f, sep="\t", index=False, na_rep="NaN")


def read_runs(path) -> pd.DataFrame:
    """Read a runs.tsv written by :func:`write_runs`."""
    return pd.read_csv(path, sep="\t", comment="#")


def _seeds(text: str) -> list:
    """Seeds from ``N`` (0..N-1) or a comma-separated list."""
    return [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))


def _repetitions(pairs) -> dict:
    """{algorithm: n} from ``A=N`` pairs (N >= 1)."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"--repetitions expects ALGORITHM=N with N >= 1, got {pair!r}")
        out[name] = int(value)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m onepass.analysis", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="metrics.json of every run -> runs.tsv")
    c.add_argument("--dataset", required=True)
    c.add_argument("--runs-dir", required=True)
    c.add_argument("--algorithms", nargs="+", required=True)
    c.add_argument("--seeds", required=True, help="N for seeds 0..N-1, or a list 0,3,7")
    c.add_argument("--repetitions", nargs="*", default=[], metavar="A=N",
                   help="algorithm A runs only the first N seeds (e.g. a search's repetitions)")
    c.add_argument("--out", required=True)

    s = sub.add_parser("summary", help="runs.tsv -> per-algorithm summary.tsv")
    s.add_argument("--runs", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--bootstrap", type=int, default=1000)

    t = sub.add_parser("paper-tables", help="summary.tsv files -> paper-style tables")
    t.add_argument("--summaries", nargs="+", required=True)
    t.add_argument("--markdown", required=True)
    t.add_argument("--tsv", required=True)

    f = sub.add_parser("figure", help="one figure of a dataset, as PNG and SVG")
    f.add_argument("--kind", required=True)
    f.add_argument("--runs", required=True)
    f.add_argument("--runs-dir", required=True)
    f.add_argument("--out", nargs="+", required=True)

    g = sub.add_parser("page", help="self-contained HTML analysis page of a dataset")
    g.add_argument("--dataset", required=True)
    g.add_argument("--runs", required=True)
    g.add_argument("--summary", required=True)
    g.add_argument("--sweep-summary", required=True)
    g.add_argument("--figures", nargs="+", required=True, help="PNG files to embed")
    g.add_argument("--runs-dir", help="the dataset's runs directory (for run settings)")
    g.add_argument("--out", required=True)
    return p


def main(argv=None) -> None:
    """Dispatch a sub-command."""
    args = _parser().parse_args(argv)
    if args.command == "collect":
        try:
            repetitions = _repetitions(args.repetitions)
        except argparse.ArgumentTypeError as err:
            _parser().error(str(err))
        runs = collect(args.dataset, args.runs_dir, args.algorithms, _seeds(args.seeds), repetitions)
        write_runs(runs, args.out)
        print(status_line(runs))
    elif args.command == "summary":
        from onepass import tables
        tables.summarise(read_runs(args.runs), n_boot=args.bootstrap).to_csv(
            args.out, sep="\t", index=False, na_rep="NaN")
    elif args.command == "paper-tables":
        from onepass import tables
        tables.write_paper_tables(args.summaries, args.markdown, args.tsv)
    elif args.command == "figure":
        from onepass import figures
        figures.make(args.kind, read_runs(args.runs), args.runs_dir, args.out)
    elif args.command == "page":
        from onepass import report_page
        report_page.write(args.dataset, args.runs, args.summary, args.sweep_summary,
                          args.figures, args.out, args.runs_dir)


if __name__ == "__main__":
    main()
