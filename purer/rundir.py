"""A run's home on disk, and writes that survive a kill at any moment.

Layout::

    runs/<YYYYmmdd-HHMMSS>-<id>/
        config.toml / config.json   resolved configuration (seed included)
        metrics.jsonl               one JSON object per logged step
        checkpoints/                safetensors + JSON, written atomically
        images/                     PNG grids and curves
        results.json / results.md   evaluation tables
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from purer.config import RunConfig, to_toml
from purer.errors import ConfigError
from purer.runtime import prepare_compute


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU. Computing starts here,
    so this also applies purer's process-wide compute settings
    (:func:`purer.runtime.prepare_compute`)."""
    prepare_compute()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' was asked for but CUDA is not available")
    return device


def _temporary_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _publish(tmp: str, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` with the permissions a plain ``open`` would give.

    ``mkstemp`` (and safetensors, which recreates the file) leave it readable
    by its owner only; a zoo or a run shared with colleagues should follow
    the user's umask instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename."""
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> None:
    fd, tmp = _temporary_beside(path)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


class RunDir:
    """One run's directory; every artefact of the run lives under it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.images = self.path / "images"

    @classmethod
    def create(cls, config: RunConfig) -> RunDir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = config.name or f"{stamp}-{secrets.token_hex(3)}"
        run = cls(Path(config.out) / name)
        run.path.mkdir(parents=True, exist_ok=config.name is not None)
        run.checkpoints.mkdir(exist_ok=True)
        run.images.mkdir(exist_ok=True)
        run.save_config(config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(Path(path))
        if not (run.path / "config.json").is_file():
            raise ConfigError(f"{run.path}: not a run directory (no config.json)")
        return run

    def save_config(self, config: RunConfig) -> None:
        atomic_write_text(self.path / "config.json", config.model_dump_json(indent=2))
        atomic_write_text(self.path / "config.toml", to_toml(config))

    def load_config(self) -> RunConfig:
        return RunConfig.model_validate_json((self.path / "config.json").read_text())

    # ----------------------------------------------------------------- metrics
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_metrics(self) -> Iterator[dict[str, Any]]:
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records after ``last_step`` (those a killed run wrote after its
        last checkpoint), so a resumed run's log has no duplicates."""
        kept = [r for r in self.read_metrics() if r.get("step", -1) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
