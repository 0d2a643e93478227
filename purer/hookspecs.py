"""The hooks a purer plugin can implement.

Every hook follows one shape: ``register_<things>(register)``. The host calls
it once, at start-up, with a ``register(name, obj)`` callback; the plugin calls
``register`` once per component it provides. The host knows which plugin made
each call, so two plugins that claim the same name are reported by name.

A complete plugin is one module::

    import purer
    from purer.interfaces import Curriculum

    class Never(Curriculum):
        def adversarial_scale(self, step): return 0.0
        def observe(self, step, accuracy): pass

    @purer.hookimpl
    def register_curricula(register):
        register("never", Never)

plus ``[project.entry-points.purer] never = "my_module"`` in its pyproject.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "purer"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[str, Any], None]

# --------------------------------------------------------------------------
# Core interfaces of the method (Alg. 1 and Alg. 2)
# --------------------------------------------------------------------------


@hookspec
def register_inverters(register: Register) -> None:
    """Register :class:`purer.interfaces.Inverter` subclasses.

    Called once when the plugin host starts. An inverter owns the learnable
    memory of pseudo images and takes one inversion step per outer step.
    """


@hookspec
def register_inversion_terms(register: Register) -> None:
    """Register :class:`purer.interfaces.InversionTerm` subclasses.

    Called once when the plugin host starts. Terms are the weighted pieces of
    the inversion loss (Eq. 2-4: cross-entropy, total variation, l2, BN
    statistics); an inverter looks them up by name, so a plugin can add a new
    regulariser or replace one by registering it under a new name.
    """


@hookspec
def register_curricula(register: Register) -> None:
    """Register :class:`purer.interfaces.Curriculum` subclasses.

    Called once when the plugin host starts. A curriculum decides, from the
    outer loop's feedback, when the reversed outer loss flows into the memory.
    """


@hookspec
def register_meta_learners(register: Register) -> None:
    """Register :class:`purer.interfaces.MetaLearner` subclasses.

    Called once when the plugin host starts. A meta-learner adapts to an
    episode's support set (inner loop) and scores its query set (outer loss).
    """


@hookspec
def register_calibrators(register: Register) -> None:
    """Register :class:`purer.interfaces.Calibrator` subclasses.

    Called once when the plugin host starts. A calibrator runs at meta-test
    time after the inner loop and before the queries are predicted (ICFIL).
    """


# --------------------------------------------------------------------------
# Inputs: data, models and initial weights
# --------------------------------------------------------------------------


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`purer.interfaces.DatasetReader` subclasses.

    Called once when the plugin host starts. A reader turns files the user
    already has into per-split uint8 images, labels and class names.
    """


@hookspec
def register_architectures(register: Register) -> None:
    """Register model architectures by name.

    Called once when the plugin host starts. ``register(name, factory)``
    takes a timm model entry point (a function decorated with
    ``timm.models.register_model``), so every teacher and meta-model is
    created through ``timm.create_model``. Any timm name works without
    registration; registering lists it in ``purer plugins``.
    """


@hookspec
def register_initializers(register: Register) -> None:
    """Register :class:`purer.interfaces.Initializer` subclasses.

    Called once when the plugin host starts. An initialiser sets the
    meta-model's weights before meta-training or as a baseline (random,
    average of the teachers, OT fusion, ...).
    """


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``purer`` click group.

    Called once, when the command line starts, with the root
    :class:`click.Group`; use ``@cli.command()`` to attach a command.
    """
