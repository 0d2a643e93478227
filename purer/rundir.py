"""A run's home on disk, and writes that survive a kill at any moment.

Layout::

    runs/<YYYYmmdd-HHMMSS>-<id>/
        config.toml / config.json   resolved configuration (seed included)
        metrics.jsonl               one JSON object per logged step
        checkpoints/                safetensors + JSON, written atomically
        images/                     PNG grids and curves
        results.json / results.md   evaluation tables
        run.json                    the run's own command-line flags (e.g. --no-eval)
        .lock                       held by the process that runs it

A run folder belongs to one run: creating one refuses a folder that already
holds something, and the process working in it holds ``.lock`` (an advisory
``flock``, released by the kernel when the process ends, however it ends),
so a second ``purer run --name X`` or ``--resume`` of a running run is
refused instead of interleaving two runs' files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, save_file

from purer.config import RunConfig, to_toml
from purer.errors import ConfigError, RunError
from purer.runtime import prepare_compute

try:  # POSIX; elsewhere folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
FLAGS_NAME = "run.json"



def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB chunks so large checkpoints never sit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

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


class FileLock:
    """An exclusive advisory lock on ``path`` (created if absent), for one holder at a time.

    ``flock`` locks belong to the open file, so two processes (or two
    threads that open the file separately) exclude each other, and the
    kernel drops the lock when its holder exits, even on SIGKILL: a crashed
    run never leaves a stale lock behind.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; with ``wait=False`` return False at once when it is held."""
        if self._file is not None:
            return True
        handle = self.path.open("a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                return False
            except OSError as exc:  # a file system without locks (some network mounts)
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    handle.close()
                    raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def holder(self) -> str:
        """Who holds the lock, as far as its file says (for messages)."""
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops its lock
            self._file = None

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunDir:
    """One run's directory; every artefact of the run lives under it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.images = self.path / "images"
        self.created = False  # the folder was made by this process, in :meth:`create`
        self.owned = False  # its content is this process's: it was empty when claimed
        self._lock = FileLock(self.path / LOCK_NAME)

    @classmethod
    def create(cls, config: RunConfig) -> RunDir:
        """A new run folder, claimed (locked) by this process.

        A folder that already holds anything is refused: reusing a name would
        overwrite another run's configuration and append to its metrics.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = config.name or f"{stamp}-{secrets.token_hex(3)}"
        run = cls(Path(config.out) / name)
        existed = run.path.exists()
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"{run.path}: cannot create the run folder "
                           f"({exc.strerror or exc})") from None
        run.claim()
        if any(p.name != LOCK_NAME for p in run.path.iterdir()):
            run.release()
            raise RunError(f"{run.path}: already holds a run (a run folder belongs to one run); "
                           f"continue it with `purer run --resume {run.path}` or choose another "
                           "--name")
        run.created, run.owned = not existed, True
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

    def claim(self) -> None:
        """Hold the run folder's lock until :meth:`release` (or the process ends)."""
        if not self._lock.acquire(wait=False):
            raise RunError(f"{self.path}: in use by another purer process "
                           f"({self._lock.holder()}); wait for it to finish or stop it")

    def release(self) -> None:
        self._lock.release()

    def discard(self) -> None:
        """Undo :meth:`create` when setting up the run failed before anything
        worth keeping (a checkpoint) was written: the folder goes, or, when it
        existed (empty) before, what this process put in it."""
        if not self.owned or any(self.checkpoints.glob("*.json")):
            return
        self.release()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for path in self.path.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- flags
    def load_flags(self) -> dict[str, Any]:
        """The run's own command-line choices (e.g. ``no_eval``), which a resume keeps."""
        path = self.path / FLAGS_NAME
        try:
            flags = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunError(f"{path}: unreadable ({exc})") from None
        return flags if isinstance(flags, dict) else {}

    def save_flags(self, flags: dict[str, Any]) -> None:
        atomic_write_text(self.path / FLAGS_NAME, json.dumps(flags, indent=2) + "\n")

    def save_config(self, config: RunConfig) -> None:
        atomic_write_text(self.path / "config.json", config.model_dump_json(indent=2))
        atomic_write_text(self.path / "config.toml", to_toml(config))

    def load_config(self) -> RunConfig:
        path = self.path / "config.json"
        try:
            return RunConfig.model_validate_json(path.read_text())
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunError(f"{path}: not a readable run configuration ({first})") from None

    # ----------------------------------------------------------------- metrics
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        try:
            with self.metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise RunError(f"{self.metrics_path}: cannot append ({exc.strerror or exc})") from None

    def read_metrics(self) -> Iterator[dict[str, Any]]:
        """The logged records; a line cut short by a kill mid-write is skipped."""
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    def truncate_metrics(self, last_step: int) -> None:
        """Drop records after ``last_step`` (those a killed run wrote after its
        last checkpoint), so a resumed run's log has no duplicates."""
        kept = [r for r in self.read_metrics() if r.get("step", -1) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
