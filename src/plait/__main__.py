"""``python -m plait``: the same entry point as the ``plait`` command."""

from plait._entry import main

main()
