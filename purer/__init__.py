"""purer: data-free meta-learning from a zoo of pre-trained classifiers.

The public plugin surface is two names: :data:`hookimpl` to mark hook
implementations, and the interfaces in :mod:`purer.interfaces`. See
``docs/plugins.md`` for the tutorial.
"""

from purer.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
