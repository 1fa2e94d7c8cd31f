"""``python -m dispatchlet.cli``: the same as the ``dispatchlet`` command."""

from .main import main

raise SystemExit(main())
