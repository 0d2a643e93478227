"""Moved: the paper's tables are reproduced by ``purer reproduce`` (see docs/reproduce.md).

This wrapper keeps the earlier command lines working: it passes its arguments
to ``purer reproduce``, reading the earlier ``--scenario ss|sh|mh`` as
``--table`` (default: ss).

    python experiments/reproduce.py --root DIR --steps 2000
    # is now
    purer reproduce --table ss --root DIR --steps 2000
"""

from __future__ import annotations

import sys


def translate(argv: list[str]) -> list[str]:
    """The earlier options as ``purer reproduce`` options."""
    args, given_table = [], False
    items = iter(argv)
    for item in items:
        if item == "--scenario":
            item = "--table"
        elif item.startswith("--scenario="):
            item = "--table=" + item.split("=", 1)[1]
        given_table = given_table or item == "--table" or item.startswith("--table=")
        args.append(item)
    return ["reproduce", *([] if given_table else ["--table", "ss"]), *args]


if __name__ == "__main__":
    from purer.cli.main import main

    main(translate(sys.argv[1:]))
