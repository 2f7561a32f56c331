"""`python -m service` is the `chatledger` command."""

from __future__ import annotations

from service.cli import main

raise SystemExit(main())
