"""Fixtures of the engine tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from run_helpers import RESUME_CHANGES, metrics, run_purer, write_config


@dataclass
class Reference:
    """An uninterrupted run that interrupted and resumed runs must replay."""

    config: Path
    metrics: list[dict]


@pytest.fixture(scope="session")
def resume_reference(tmp_path_factory: pytest.TempPathFactory, tiny_zoo: Path) -> Reference:
    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder, tiny_zoo, **RESUME_CHANGES)
    run_purer("run", "--no-eval", "--config", str(config), "--name", "whole")
    return Reference(config, metrics(folder / "runs" / "whole"))
