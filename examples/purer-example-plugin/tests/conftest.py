"""purer's fixtures for plugin authors (``purer_host``, ``register_plugin``,
``run_dir``) and its tiny-teacher helpers."""

pytest_plugins = ["purer.pytest_plugin", "purer.testing"]
