"""``get --pgbadger OUT.html``: the files ``get`` wrote, handed to pgbadger (Debian's ``pgbadger``
package, a Perl script: not a Python dependency). The files are the exact csvlog bytes RDS wrote,
so pgbadger reads them as csvlog (``-f csv``); its report format follows OUT's extension (``.html``,
``.txt``, ``.json``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence

from rdsrecorder.errors import RdsRecorderError, one_line

log = logging.getLogger(__name__)

INSTALL_HINT = "pgbadger is not installed (Debian/Ubuntu: apt-get install pgbadger)"


class PgbadgerError(RdsRecorderError):
    """pgbadger ran and failed (the files stay written)."""


def find_pgbadger() -> str | None:
    return shutil.which("pgbadger")


def command(pgbadger: str, files: Sequence[str], out: str) -> list[str]:
    return [pgbadger, "--format", "csv", "--quiet", "--outfile", out, *files]


async def write_report(files: Sequence[str], out: str) -> None:
    """Runs pgbadger over ``files`` (in this order) into ``out``."""
    pgbadger = find_pgbadger()
    if pgbadger is None:
        raise PgbadgerError(INSTALL_HINT)
    argv = command(pgbadger, files, out)
    log.info("pgbadger: %d file(s) -> %s", len(files), out)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        said = stderr.decode(errors="replace").strip().splitlines()
        raise PgbadgerError(
            f"pgbadger exited with {proc.returncode}"
            + (f": {one_line(said[-1], 300)}" if said else "")
            + f" (the files are written; run it yourself: {' '.join(argv[:6])} ...)"
        )
    log.info("pgbadger report: %s", out)
