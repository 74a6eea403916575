"""``python -m mimo_toolkit.cli ...``: the ``mimo-toolkit`` command where no console script is
installed (a wheel unpacked with ``pip install --target``, as on the lent GPU machines)."""

from mimo_toolkit.cli import main

main()
