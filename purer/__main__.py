"""``python -m purer``: the ``purer`` command (``torchrun ... -m purer run``)."""

from purer.cli.main import main

if __name__ == "__main__":
    main()
