"""The `canary` command line: local commands (`local.py`), cluster commands (`cluster.py`), one entry (`main.py`)."""
