"""Test-suite set-up: purer's plugin-author fixtures, and isolation from
third-party plugins that happen to be installed.

Like simonw/llm's suite, the tests see only the built-in plugins of the
``purer`` distribution: at session start every other distribution in the
``purer`` entry-point group is added to ``PURER_DISABLE_PLUGINS`` (by
distribution name, so a third-party entry point that reuses a built-in
entry-point name cannot disable the built-in). A test that needs the
installed plugins opts in with ``@pytest.mark.installed_plugins``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from pathlib import Path

import pytest
import torch

from purer.plugins import DISABLE_ENV, ENTRY_POINT_GROUP, get_host

pytest_plugins = ["purer.pytest_plugin", "purer.testing", "pytester"]

BUILTIN_DISTRIBUTION = "purer"
REPO = Path(__file__).resolve().parents[1]
# The real datasets, beside the checkout (or where PURER_DATA_DIR says); tests that
# need them skip when they are absent.
SHARED_DATA = Path(os.environ.get("PURER_DATA_DIR") or REPO.parent / "shared" / "data")
_USER_DISABLED = os.environ.get(DISABLE_ENV)


def third_party_distributions() -> set[str]:
    """Distributions other than purer that declare ``purer`` entry points."""
    found = set()
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        if dist != BUILTIN_DISTRIBUTION:
            found.add(dist or ep.name)
    return found


def pytest_configure(config: pytest.Config) -> None:
    # The suite's models are tiny: intra-op threads only add overhead, and on a
    # busy machine OpenMP threads waiting on each other make them many times
    # slower. One thread also keeps every in-process result bit-for-bit stable.
    torch.set_num_threads(1)
    config.addinivalue_line(
        "markers", "installed_plugins: load third-party purer plugins installed in the "
        "environment (the suite disables them otherwise)")
    others = third_party_distributions()
    if others:
        disabled = {n.strip() for n in (_USER_DISABLED or "").split(",") if n.strip()}
        os.environ[DISABLE_ENV] = ",".join(sorted(disabled | others))
    get_host.cache_clear()


def pytest_report_header(config: pytest.Config) -> str | None:
    others = third_party_distributions()
    if others:
        return f"purer: third-party plugins disabled for the suite: {', '.join(sorted(others))}"
    return None


@pytest.fixture(autouse=True)
def _installed_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Give tests marked ``installed_plugins`` the user's plugin environment."""
    if request.node.get_closest_marker("installed_plugins") is None:
        yield
        return
    if _USER_DISABLED is None:
        monkeypatch.delenv(DISABLE_ENV, raising=False)
    else:
        monkeypatch.setenv(DISABLE_ENV, _USER_DISABLED)
    get_host.cache_clear()
    yield
    get_host.cache_clear()
