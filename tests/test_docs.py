"""The documentation cannot drift from the code: docs/cli.md is what `scripts/gen-cli-doc.py`
prints from the CLI's own `--help`, the README stays a front door of at most 300 lines, every
page a README or docs/ link names exists, and docs/metrics.md names every metric and alert."""

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


def test_readme_and_docs_links_exist() -> None:
    """Every page the README and the docs link to is there."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in _LINK.findall(page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_metric_and_alert_is_documented() -> None:
    """docs/metrics.md names every series metrics.py exports and has a row for every alert."""
    metrics = set(
        re.findall(r'"(rdsrecorder_[a-z_]+)"', (ROOT / "rdsrecorder/metrics.py").read_text())
    )
    alerts = set(re.findall(r"alert: (\w+)", (ROOT / "prometheus/alerts.yml").read_text()))
    assert metrics and alerts
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert not {m for m in metrics if f"`{m}" not in doc}, "metrics missing from docs/metrics.md"
    assert not {a for a in alerts if f"| `{a}`" not in doc}, "alerts missing from docs/metrics.md"
