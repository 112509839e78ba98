"""The documentation cannot drift from the code: docs/cli.md is what `scripts/gen-cli-doc.py`
prints from the CLI's own `--help`, the README stays a front door of at most 300 lines, and every
page a README or docs/ link names exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
# Relative links ([text](path) or [text](path#anchor)), not URLs.
_LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)")


def test_cli_reference_is_generated_from_help() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDSRECORDER_", "COLUMNS"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-cli-doc.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    assert done.stderr == ""
    assert "## rdsrecorder sync" in done.stdout
    assert (ROOT / "docs" / "cli.md").read_text() == done.stdout, (
        "docs/cli.md differs from --help: run `python scripts/gen-cli-doc.py > docs/cli.md`"
    )


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_readme_and_cli_doc_links_exist() -> None:
    """The pages the README and the docs it leads to by name must be there (pages other work adds
    to docs/design.md's list are checked once they exist)."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page.name == "design.md":
            continue
        for target in _LINK.findall(page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
