"""List the benchmarks, or run one: ``python -m benchmarks [NAME [options]]``.

A benchmark is a module of this package that defines ``main(argv)``; it is
found without being imported (its source is parsed), so listing starts
without torch. ``NAME`` is the module's name with ``-`` for ``_``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

from purer.errors import PurerError

HERE = Path(__file__).resolve().parent


def _defines_main(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def available() -> dict[str, tuple[str, str]]:
    """Benchmark name -> (module, first line of its docstring)."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text())
        if _defines_main(tree):
            summary = (ast.get_docstring(tree) or "").strip().splitlines()
            found[path.stem.replace("_", "-")] = (path.stem, summary[0] if summary else "")
    return found


def usage(benchmarks: dict[str, tuple[str, str]]) -> str:
    width = max(len(name) for name in benchmarks)
    lines = ["usage: python -m benchmarks NAME [options]   (NAME --help for its options)", "",
             "benchmarks:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in benchmarks.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    benchmarks = available()
    if not argv or argv[0] in ("list", "-h", "--help"):
        print(usage(benchmarks))
        return 0
    name = argv[0].replace("_", "-")
    if name not in benchmarks:
        print(f"error: unknown benchmark '{argv[0]}' (available: {', '.join(benchmarks)})",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{benchmarks[name][0]}")
    try:
        module.main(argv[1:])
    except PurerError as exc:  # a mistake in the options: one line, as the purer command does
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
