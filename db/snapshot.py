"""The schema as pg_dump prints it, normalised, to compare with the committed db/schema.sql.

Regenerate after adding a migration:  python -m db.snapshot "$DATABASE_URL" > db/schema.sql
(on a database migrated from empty)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from clients.postgres import bundled_binary

SNAPSHOT = Path(__file__).parent / "schema.sql"
SCHEMAS = ("dramatiq", "studio")
_NOISE = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")


def normalise(dump: str) -> str:
    """Drop comments, session settings and pg_dump's per-run keys; squeeze blank lines."""
    kept = [line.rstrip() for line in dump.splitlines() if not line.startswith(_NOISE)]
    text = "\n".join(kept)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


def dump_schema(url: str) -> str:
    """The normalised schema-only dump of our schemas."""
    argv = [str(bundled_binary("pg_dump")), "--schema-only", "--no-owner", "--no-privileges",
            *(f"--schema={s}" for s in SCHEMAS), "--dbname", url]
    return normalise(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    sys.stdout.write(dump_schema(sys.argv[1]))
