"""``python -m sluice`` runs the CLI."""

from sluice.cli import main

main()
