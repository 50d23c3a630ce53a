"""`python -m launcher ...` (the same as the `gpt-launch` console script)."""

from launcher.cli import main

main()
