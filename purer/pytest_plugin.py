"""pytest fixtures for testing purer plugins without data, a GPU or a zoo.

Enable them in your plugin's ``conftest.py``::

    pytest_plugins = ["purer.pytest_plugin"]

Fixtures:

``purer_host``
    A fresh :class:`purer.plugins.PluginHost` with the installed entry points
    loaded (respecting ``PURER_DISABLE_PLUGINS``). During the test it is also
    what :func:`purer.plugins.get_host` returns, so the CLI and the engine see
    it; afterwards the ``get_host`` cache is cleared, so nothing the test did
    to the host leaks into the next test::

        def test_my_curriculum_is_installed(purer_host):
            assert "every-k" in purer_host.names("curriculum")

``register_plugin``
    A function ``register_plugin(plugin, name="inline")`` that registers an
    inline plugin (a module, a class or an instance with ``@hookimpl``
    functions, ``hookimpl`` from :mod:`purer.api`) into the host returned by
    ``get_host()`` for the duration of one test, and returns its
    :class:`purer.plugins.PluginInfo`. At teardown the plugin and everything
    it registered are removed again, even when the registration itself
    failed half-way. Registering the plugin's own module this way tests it
    without installing it::

        class Plugin:
            @hookimpl
            def register_curricula(self, register):
                register("never", Never)

        def test_never(register_plugin):
            register_plugin(Plugin())
            curriculum = get_host().create("curriculum", "never")
            assert curriculum.adversarial_scale(10) == 0.0

``run_dir``
    A :class:`purer.rundir.RunDir` created from a default
    :class:`purer.config.RunConfig` with ``out`` set to pytest's ``tmp_path``
    (named ``run``), for components that write checkpoints, metrics or
    pictures.

For components that need teachers or episodes, :mod:`purer.testing` builds
them on a CPU in seconds (``tiny_teacher``, ``inversion_loss``,
``setup_inverter``, ``random_episodes``, and the session fixture
``tiny_zoo``; enable it with ``pytest_plugins = ["purer.pytest_plugin",
"purer.testing"]``). ``examples/purer-example-plugin/tests`` uses both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from purer.config import RunConfig
from purer.plugins import PluginHost, PluginInfo, get_host
from purer.rundir import RunDir

__all__ = ["purer_host", "register_plugin", "run_dir", "unregister_plugin"]


def unregister_plugin(host: PluginHost, name: str) -> None:
    """Remove plugin ``name`` and every component it registered from ``host``."""
    host.unregister_plugin(name)


@pytest.fixture
def purer_host() -> Iterator[PluginHost]:
    """A fresh host with the installed plugins, isolated from the process-wide one."""
    get_host.cache_clear()
    try:
        yield get_host()
    finally:
        get_host.cache_clear()


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., PluginInfo]]:
    """Register inline plugins into ``get_host()`` for one test."""
    added: list[tuple[PluginHost, str]] = []

    def register(plugin: Any, name: str = "inline", distribution: str = "(inline)") -> PluginInfo:
        host = get_host()
        if name not in host.plugins:  # a clash must not remove the plugin already there
            added.append((host, name))
        host.register_plugin(plugin, name, distribution)
        return host.plugins[name]

    yield register
    for host, name in reversed(added):
        unregister_plugin(host, name)


@pytest.fixture
def run_dir(tmp_path) -> RunDir:
    """A run directory under ``tmp_path`` from the default configuration."""
    return RunDir.create(RunConfig(out=str(tmp_path), name="run"))
