"""``python -m dispatchlet``: the command-line tool."""

from .cli.main import main

raise SystemExit(main())
