"""``purer ARGS`` in this process, with Ctrl-C (SIGINT) sent to itself from
inside chosen phases of the run: a test helper of test_interrupt.py.

``PURER_TEST_SIGINT`` lists triggers ``phase:n`` separated by commas. The
n-th call of the phase's function, counted from when the previous trigger
fired, sends SIGINT to this process from inside that call, as a Ctrl-C
landing there would: ``before`` the function's work, or ``after`` it (for
the checkpoint write: after the tensors file is written, before the rest).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

# phase -> (module, class or None, function names to try, when)
PHASES = {
    "inversion": ("purer_plugins.inversion.deepinv", "DeepInversion", ("step",), "before"),
    "meta": ("purer_plugins.learners.maml", "MAML", ("meta_step",), "before"),
    "validation": ("purer.engine.trainer", None, ("evaluate",), "before"),
    "checkpoint": ("purer.engine.checkpoint", None, ("atomic_write_bytes", "atomic_save_tensors"),
                   "after"),
    "pictures": ("purer.engine.trainer", None, ("save_grid",), "after"),
    "setup": ("purer.pipeline.build", None, ("load_zoo",), "before"),
    "final evaluation": ("purer.pipeline.final", None, ("score_methods",), "before"),
}


def install(spec: str) -> None:
    triggers = [(phase, int(n)) for phase, n in (item.split(":") for item in spec.split(","))]
    progress = {"index": 0, "calls": 0}

    def wrap(phase: str, original, when: str):
        def wrapper(*args, **kwargs):
            fire = False
            if progress["index"] < len(triggers) and triggers[progress["index"]][0] == phase:
                progress["calls"] += 1
                if progress["calls"] == triggers[progress["index"]][1]:
                    fire = True
                    progress["index"] += 1
                    progress["calls"] = 0
            if fire and when == "before":
                os.kill(os.getpid(), signal.SIGINT)
            result = original(*args, **kwargs)
            if fire and when == "after":
                os.kill(os.getpid(), signal.SIGINT)
            return result

        return wrapper

    for phase in dict.fromkeys(p for p, _ in triggers):
        module_name, class_name, names, when = PHASES[phase]
        owner = importlib.import_module(module_name)
        if class_name:
            owner = getattr(owner, class_name)
        name = next(n for n in names if hasattr(owner, n))
        setattr(owner, name, wrap(phase, getattr(owner, name), when))


if __name__ == "__main__":
    if os.environ.get("PURER_TEST_SIGINT"):
        install(os.environ["PURER_TEST_SIGINT"])
    from purer.cli.main import main

    main(sys.argv[1:])
