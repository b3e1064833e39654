#!/usr/bin/env bash
# Set up (scripts/setup.sh), run the quick study on the local profile and build its report:
# UCI Energy and Fashion-MNIST, every gradient-based algorithm plus Random and Random_Validation.
# Outputs: results/quick/ (tables, figures, analysis pages, report.html); prepared data in results/data.
# Extra arguments go to snakemake, e.g. `--cores 8`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$root/scripts/setup.sh"
cd "$root"
python -m snakemake --profile profiles/local --configfile config/quick.yaml "$@"
python -m snakemake --profile profiles/local --report results/quick/report.html --configfile config/quick.yaml
echo "done: results/quick/tables/paper_tables.md, results/quick/analysis/*.html, results/quick/report.html"
