"""``--nproc N``: start the command again in N processes with torchrun's
own launcher (``torch.distributed.run``) on this machine, and turn a failed
rank into one line (docs/distributed.md)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from purer.errors import PurerError

if TYPE_CHECKING:
    from purer.distributed import World

# The command line of the running ``purer`` (set by ``purer.cli.main.main``).
ARGS: list[str] = []


class RankFailed(PurerError):
    """A rank of a multi-process command failed; the job was taken down."""


def without_nproc(args: Sequence[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def relaunched(nproc: int | None) -> bool:
    """With ``--nproc N`` (N > 1) outside torchrun: run this command on N
    local ranks instead, and say so (the caller then returns)."""
    from purer.distributed import launched

    if nproc is None or nproc < 2 or launched():
        return False
    relaunch(nproc, ARGS)
    return True


@contextmanager
def joined_world(device: str, what: str, fingerprint: str) -> Iterator[World]:
    """This process's world for one command (one process unless torchrun
    started it): the ranks check that they run the same ``what`` (by its
    ``fingerprint``), only rank 0 talks, and the process group is left at
    the end."""
    from purer.distributed import finish_world, init_world
    from purer.progress import console

    world = init_world(device)
    try:
        world.check_same(what, fingerprint)
        if not world.is_main:
            console.quiet = True
        yield world
    finally:
        finish_world()


def relaunch(nproc: int, args: Sequence[str]) -> None:
    """Run ``purer ARGS`` (without ``--nproc``) on ``nproc`` local ranks and
    wait for them; raises :class:`RankFailed` naming the first rank that failed."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launcher = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
                           "--module", "purer", *without_nproc(args)])
    try:
        run(launcher)
    except SignalException as exc:  # Ctrl-C: the ranks got it too, finish their step and save
        print(f"interrupted: signal {exc.sigval.name} passed on to the {nproc} ranks",
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        cause = failure.message
        if isinstance(cause, dict):  # what record_failure wrote: "ConfigError: one line"
            cause = str(cause.get("message", cause)).split(": ", 1)[-1]
        cause = str(cause)
        if cause.startswith("To enable traceback"):
            cause = "see its output above"
        raise RankFailed(f"rank {rank} of {nproc} failed (exit code {failure.exitcode}): "
                         f"{cause.splitlines()[0] if cause else 'no message'}; the other ranks "
                         "were stopped") from None
    sys.stderr.flush()


def record_failure(exc: BaseException) -> None:
    """Leave ``exc`` where torchrun's agent reads a failed rank's cause."""
    import os

    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(exc)
