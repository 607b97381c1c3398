"""`python -m dispatch_engine …`: the same CLI as the `dispatch-engine` command."""

from .cli import main

main()
