"""The command line ``python -m onepass.data`` (see :mod:`onepass.data`); errors exit with status 1 and a
one-line message."""

from __future__ import annotations

import argparse
import sys

from .fetching import fetch
from .loading import status
from .preparing import prepare
from .sources import DEFAULT_DATA_DIR, DEFAULT_SOURCES, MIRRORS_ENV, DataError, datasets


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m onepass.data",
                                     description="Data layer: fetch, verify, prepare and load the study's datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (
        ("prepare", "fetch, verify and prepare a dataset"),
        ("fetch", "fetch and verify raw files only"),
    ):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("dataset")
        sub.add_argument("--data-dir", required=True, help="writes DATA_DIR/DATASET/")
        sub.add_argument(
            "--mirror", action="append", help=f"local mirror directory (repeatable; default ${MIRRORS_ENV})"
        )
        sub.add_argument("--sources", help=f"sources table (default {DEFAULT_SOURCES})")
        sub.add_argument("--offline", action="store_true", help="never download; mirrors only")
    listing = commands.add_parser("list", help="list the known datasets and whether each is prepared")
    listing.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for name, family in datasets().items():
                print(f"{name}\t{family}\t{status(name, args.data_dir)}")
        else:
            action = prepare if args.command == "prepare" else fetch
            result = action(args.dataset, args.data_dir, args.mirror, args.sources, download=not args.offline)
            print(result if args.command == "prepare" else "\n".join(map(str, result.values())))
    except DataError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0
