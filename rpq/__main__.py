"""Allow `python -m rpq`."""

from rpq.cli import main

main()
