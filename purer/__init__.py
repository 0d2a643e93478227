"""purer: data-free meta-learning from a zoo of pre-trained classifiers.

The public plugin API is :mod:`purer.api` (``hookimpl``, the component
interfaces, the data types and the helpers a plugin may use); see
``docs/plugins.md`` for the tutorial.
"""

from purer.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
