"""The options of lmlab's commands, as dataclass fields: each field is one flag of its command (and
one key of its `--config` YAML file). The dataclasses live beside the functions they configure;
`lmlab.cli` builds the parsers from them.

`option(default, help, ...)` is `dataclasses.field` with what the command line needs to know:
- `flag`: the flag's name when it is not the field's (e.g. `no-progress` for `progress`, stored false);
- `positional`: a positional argument (`lmlab generate DIR`);
- `repeat`: a flag that may be given several times (a list);
- `nargs`: a flag that takes that many values at once (a tuple, e.g. two files);
- `choices`: the allowed values (the CLI fills in registry-derived choices itself);
- `group`: fields of one group are alternatives; exactly one must be given;
- `nargs`: a flag that takes this many values (a tuple field, e.g. `--from-fastai PTH VOCAB`).
"""

from __future__ import annotations

from dataclasses import MISSING, field


def option(default=MISSING, help: str = "", *, flag: str | None = None, positional: bool = False,
           repeat: bool = False, nargs: int | None = None, choices: tuple | None = None,
           group: str | None = None, metavar=None):
    metadata = {"help": help, "flag": flag, "positional": positional, "repeat": repeat, "nargs": nargs,
                "choices": choices, "group": group, "metavar": metavar}
    return field(default=default, metadata=metadata)
