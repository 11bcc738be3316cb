"""`python -m controller.cli ...`: the `canary` command line (`controller.cli.main.main`)."""

from __future__ import annotations

import sys

from controller.cli.main import main

sys.exit(main())
