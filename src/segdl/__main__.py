"""``python -m segdl`` runs the command line."""

from .cli.main import main

main()
