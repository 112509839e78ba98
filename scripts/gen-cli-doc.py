"""Print docs/cli.md: every command's ``--help``, taken from the CLI itself.

    python scripts/gen-cli-doc.py > docs/cli.md

Run it after adding or changing an option; ``tests/test_cli_doc.py`` fails while docs/cli.md
differs from what this prints. The help is rendered through typer's public API (the click command
``typer.main.get_command`` builds, and ``typer.Context``) at a fixed width, so the output does not
depend on the terminal.
"""

from __future__ import annotations

from typing import Any

import typer

from rdsrecorder.cli import cli
from rdsrecorder_lab.cli import lab_cli

WIDTH = 100
_ROOT = typer.main.get_command(cli)
# `rdsrecorder lab` hands its arguments to the lab's own typer app (the [lab] extra), which
# holds the lab's help: that app is documented in its place.
_LAB = typer.main.get_command(lab_cli)

PREAMBLE = """\
# CLI reference

Generated from `--help` by `scripts/gen-cli-doc.py`; do not edit by hand
(`python scripts/gen-cli-doc.py > docs/cli.md`; a test fails while this file differs).

Every option can also be set with the environment variable named in its help
(`RDSRECORDER_<OPTION>`, for example `RDSRECORDER_DB_IDENTIFIER`); `--bucket` also reads
`AWS_S3_BUCKET_NAME`. AWS settings come from the usual places: `AWS_REGION`, `AWS_PROFILE`, the
credentials chain, and `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_RDS`, `AWS_ENDPOINT_URL_S3` and
`AWS_ENDPOINT_URL_STS` for LocalStack or the lab. Input is checked before any AWS call; what is
refused, and the exit codes: [sync.md](sync.md#retries-and-failures),
[README](../README.md#exit-codes).
"""


def _sections(command: Any, ctx: typer.Context) -> list[str]:
    """This command's help, then each subcommand's, depth first, in the CLI's order."""
    out = [f"## {ctx.command_path}\n\n```\n{command.get_help(ctx).rstrip()}\n```\n"]
    for name in getattr(command, "list_commands", lambda _ctx: [])(ctx):
        sub = _LAB if (command is _ROOT and name == "lab") else command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        out += _sections(sub, typer.Context(sub, info_name=name, parent=ctx, terminal_width=WIDTH))
    return out


def render() -> str:
    ctx = typer.Context(
        _ROOT, info_name="rdsrecorder", terminal_width=WIDTH, max_content_width=WIDTH
    )
    return PREAMBLE + "\n" + "\n".join(_sections(_ROOT, ctx))


if __name__ == "__main__":
    print(render(), end="")
