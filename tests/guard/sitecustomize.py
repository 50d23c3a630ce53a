"""Test-only: tests/helpers.py puts this directory first on the PYTHONPATH of every process the tests
start, so Python imports this module at start-up and the collectives rule is checked at run time
(see collective_guard.py). Nothing in gpt/ knows about it."""

import collective_guard

collective_guard.install()
