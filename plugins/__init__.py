"""purer's built-in plugins, installed as ``purer_plugins``.

Each sub-package is one plugin, declared under ``[project.entry-points.purer]``
in pyproject.toml exactly as a third-party package would declare its own, and
importing only :mod:`purer.api` from purer. A plugin's ``__init__`` declares
its components and their options; the implementations are registered by
reference and imported when first used, so commands that only list or
configure components start without importing torch.
"""
