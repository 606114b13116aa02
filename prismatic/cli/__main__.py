"""``python -m prismatic.cli``: the same as the ``prismatic`` console script."""

from ._main import main

main()
