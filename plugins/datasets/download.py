"""``purer data download cifar-fs``: fetch CIFAR-100 with torchvision.

CIFAR-FS is a class split of CIFAR-100, so its files are CIFAR-100's
``cifar-100-python`` folder, which torchvision knows how to download and
check. MiniImageNet has no such source and is not offered here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from purer.api import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def add_download_command(cli: Any) -> None:
    """Attach ``download cifar-fs`` to the ``data`` group (to the root if there is none)."""
    parent = cli.commands.get("data", cli) if isinstance(cli, click.Group) else cli
    download = parent.commands.get("download")
    if download is None:
        @parent.group("download")
        def download() -> None:
            """Download datasets that can be downloaded."""

    @download.command("cifar-fs")
    @click.option("--root", required=True, type=click.Path(file_okay=False),
                  help="Folder that receives cifar-100-python/.")
    def cifar_fs(root: str) -> None:
        """Download CIFAR-100 (for cifar-fs) with torchvision into ROOT."""
        folder = download_cifar100(Path(root))
        click.echo(f"cifar-fs: CIFAR-100 ready in {folder}; use --root {root}")


def download_cifar100(root: Path) -> Path:
    """torchvision's CIFAR100 downloader; a one-line DataError when offline."""
    target = root / "cifar-100-python"
    try:
        from torchvision.datasets import CIFAR100
    except ImportError:
        raise DataError(f"{root}: torchvision is not installed; download {CIFAR_URL} yourself "
                        f"and unpack it so that {target}/train, test and meta exist") from None
    try:
        CIFAR100(str(root), train=True, download=True)
    except Exception as exc:  # URLError, socket errors, checksum failures
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{root}: cannot download {CIFAR_URL} ({reason}); fetch it elsewhere "
                        f"and unpack it so that {target}/train, {target}/test and "
                        f"{target}/meta exist") from None
    return target
