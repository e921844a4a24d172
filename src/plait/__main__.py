"""``python -m plait``: the same entry point as the ``plait`` command."""

from plait.cli.main import main

main()
