"""`lmlab data ...` subcommands. `add_arguments(subparsers)` registers them on the main parser;
each parsed namespace carries `func`, a plain function of the namespace returning an exit code."""

from __future__ import annotations

import argparse

from lmlab.data.corpora import list_corpora


def add_arguments(subparsers) -> argparse.ArgumentParser:
    """Register `data` (with `data list`) on `subparsers` from ArgumentParser.add_subparsers()."""
    data = subparsers.add_parser("data", help="built-in corpora", description="Built-in corpora.")
    sub = data.add_subparsers(dest="data_command", metavar="{list}")
    sub.required = True
    ls = sub.add_parser("list", help="list built-in corpora: name, size, source, available",
                        description="List the built-in corpora (use them as --data builtin:NAME).")
    ls.set_defaults(func=data_list)
    return data


def format_table(rows: list[dict]) -> str:
    """A plain-text table of `list_corpora()` rows."""
    header = ["name", "size", "source", "available", "tokenizer", "note"]
    cells = [[r["name"], r["size"], r["source"], "yes" if r["available"] else "no", r["tokenizer"], r["note"]]
             for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(str(c[i]).ljust(widths[i]) for i in range(len(header))).rstrip()
             for c in [header, *cells]]
    return "\n".join(lines)


def data_list(args: argparse.Namespace | None = None) -> int:
    """`lmlab data list`: print the built-in corpora table."""
    print(format_table(list_corpora()))
    return 0
