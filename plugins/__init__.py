"""purer's built-in plugins, installed as ``purer_plugins``.

Each module is one plugin, declared under ``[project.entry-points.purer]`` in
pyproject.toml exactly as a third-party package would declare its own.
"""
