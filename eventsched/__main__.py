"""``python -m eventsched``: the same command as ``eventsched``."""

from eventsched.cli.app import main

main()
