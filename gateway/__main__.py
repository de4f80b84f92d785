"""``python -m gateway`` is ``medrega-gateway``."""

from .cli import main

main()
