"""Where the repository's files are, for tests that read shipped manifests, schemas and scripts."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "schemas"
