"""Population analysis of a study, one sub-command per pipeline stage.

    python -m onepass.analysis collect --plan results/S/sweep/D/plan.json --runs-dir results/S/runs/D \\
        --out results/S/tables/D/runs.tsv
    python -m onepass.analysis summary --runs runs.tsv --out summary.tsv [--html summary.html] \\
        [--statistic bootstrap|sample]
    python -m onepass.analysis paper-tables --summaries S1.tsv S2.tsv --markdown M.md --tsv T.tsv [--html T.html]
    python -m onepass.analysis figure --kind edf --runs runs.tsv --runs-dir results/S/runs/D --out f.png f.svg
    python -m onepass.analysis page --runs runs.tsv --summary summary.tsv --sweep-summary sweep.tsv \\
        --plan plan.json --figures F1.png F2.png --out D.html
"""

from __future__ import annotations

import argparse
import sys

from . import collection, plans


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m onepass.analysis", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("collect", help="metrics.json of every planned run -> runs.tsv")
    c.add_argument("--plan", required=True, help="the dataset's plan.json")
    c.add_argument("--runs-dir", required=True)
    c.add_argument("--out", required=True)

    s = sub.add_parser("summary", help="runs.tsv -> per-algorithm summary.tsv (and its HTML table)")
    s.add_argument("--runs", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--html")
    s.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    s.add_argument("--statistic", default="bootstrap", choices=("bootstrap", "sample"),
                   help="estimator of the mean, median and their SEs: bootstrap (the paper's) or sample")

    t = sub.add_parser("paper-tables", help="summary.tsv files -> paper-style tables")
    t.add_argument("--summaries", nargs="+", required=True)
    t.add_argument("--markdown", required=True)
    t.add_argument("--tsv", required=True)
    t.add_argument("--html")

    f = sub.add_parser("figure", help="one figure of a dataset, as PNG and SVG")
    f.add_argument("--kind", required=True)
    f.add_argument("--runs", required=True)
    f.add_argument("--runs-dir", required=True)
    f.add_argument("--out", nargs="+", required=True)

    g = sub.add_parser("page", help="self-contained HTML analysis page of a dataset")
    g.add_argument("--runs", required=True)
    g.add_argument("--summary", required=True)
    g.add_argument("--sweep-summary", required=True)
    g.add_argument("--plan", required=True)
    g.add_argument("--figures", nargs="+", required=True, help="PNG files to embed")
    g.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    """Dispatch a sub-command."""
    args = _parser().parse_args(argv)
    if args.command == "collect":
        runs = collection.collect(plans.read_plan(args.plan), args.runs_dir)
        collection.write_runs(runs, args.out)
        print(collection.status_line(runs))
    elif args.command == "summary":
        from . import tables
        summary = tables.summarise(collection.read_runs(args.runs), n_boot=args.bootstrap,
                                   statistic=args.statistic)
        summary.to_csv(args.out, sep="\t", index=False, na_rep="NaN")
        if args.html:
            tables.write_summary_html(summary, args.html)
    elif args.command == "paper-tables":
        from . import tables
        tables.write_paper_tables(args.summaries, args.markdown, args.tsv, args.html)
    elif args.command == "figure":
        from . import figures
        figures.make(args.kind, collection.read_runs(args.runs), args.runs_dir, args.out)
    elif args.command == "page":
        from . import report_page
        report_page.write(args.runs, args.summary, args.sweep_summary, args.plan, args.figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
