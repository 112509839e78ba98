"""`rdsrecorder lab demo` (what `make demo` runs): the whole product on one machine, no AWS.

It generates a few hours of realistic csvlog files, starts the lab (emulated RDS log API + a local
S3), backs the window up with the real sync engine, verifies the copy with `verify`, and shows
every object next to its source with its sha256, so a newcomer sees that it is byte-exact."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

import pendulum
from rich.console import Console
from rich.table import Table

from rdsrecorder.commands import SyncReport, open_bucket, run_sync
from rdsrecorder.config import AwsSettings, ObservabilitySettings, SyncSettings
from rdsrecorder.errors import EXIT_OK, EXIT_VERIFY
from rdsrecorder.hooks import Hooks
from rdsrecorder.logfiles import object_key
from rdsrecorder.times import human
from rdsrecorder.verify import VerifyReport, verify_run
from rdsrecorder_lab import LAB_REGION, LabThread, generate

INSTANCE = "lab-db"


async def _run(settings: SyncSettings) -> tuple[SyncReport, VerifyReport, dict[str, bytes]]:
    from rdsrecorder.progress import ProgressHooks

    progress = ProgressHooks(enabled=None)
    with progress:
        report = await run_sync(settings, hooks=progress)
    async with open_bucket(settings.bucket, settings.aws, Hooks()) as bucket:
        verified = await verify_run(bucket, settings.run_id)
        got: dict[str, bytes] = {}
        async for info in bucket.list_objects(f"{settings.run_id}/"):
            data = await bucket.get_bytes(info.key)
            if data is not None:
                got[info.key] = data
    return report, verified, got


def demo_main(concurrency: int = 4, hours: int = 6) -> int:
    console = Console(stderr=False, width=None if Console().is_terminal else 150)
    with tempfile.TemporaryDirectory(prefix="rdsrecorder-demo-") as tmp:
        root = Path(tmp)
        console.print(f"[bold]1.[/] generating {hours} hours of csvlog files for '{INSTANCE}'")
        files = generate(root, INSTANCE, hours=hours, size_mb=(0.01, 30.0), seed=1)
        total_mb = sum(f.size for f in files) / 1e6
        console.print(f"   {len(files)} files, {total_mb:.1f} MB (plus their plain twins)")
        console.print("[bold]2.[/] starting the lab: emulated RDS log API + local S3 (moto)")
        with LabThread(root, s3="moto") as lab:
            os.environ.update(lab.env)
            for line in sorted(lab.env.items()):
                console.print(f"   export {line[0]}={line[1]}")
            # 30 minutes into the oldest file (it is included: its span overlaps) up to the start
            # of the newest one, which is still being written and so stays out of the window.
            start = pendulum.from_timestamp(files[0].start_s + 1800, tz="UTC")
            finish = pendulum.from_timestamp(files[-1].start_s, tz="UTC")
            run_id = f"demo-{pendulum.now('UTC').format('YYYYMMDDTHHmmss')}"
            console.print(
                f"[bold]3.[/] rdsrecorder sync --start '{human(start)}' --finish '{human(finish)}' "
                f"--bucket {lab.bucket} --db-identifier {INSTANCE} --concurrency {concurrency} "
                f"--run-id {run_id}"
            )
            settings = SyncSettings(
                db_identifier=INSTANCE,
                bucket=lab.bucket,
                start=start,
                finish=finish,
                run_id=run_id,
                concurrency=concurrency,
                aws=AwsSettings(region=LAB_REGION),
                obs=ObservabilitySettings(metrics_port=0),
            )
            report, verified, got = asyncio.run(_run(settings))
        expected = [
            f for f in files if f.start_s < finish.timestamp() and f.end_s > start.timestamp()
        ]
        table = Table(title=f"s3://{settings.bucket}/{run_id}/")
        for col in ("key", "source file", "bytes", "sha256", "byte-exact"):
            table.add_column(col)
        exact = 0
        for f in expected:
            key = object_key(run_id, int(f.start_s))
            data = got.get(key)
            sha = hashlib.sha256(data).hexdigest() if data is not None else ""
            ok = sha == f.sha256
            exact += ok
            table.add_row(key, f.name, f"{len(data or b''):,}", sha[:16], "yes" if ok else "NO")
        console.print("[bold]4.[/] what landed")
        console.print(table)
        console.print(
            f"   {exact}/{len(expected)} files byte-exact; manifest: "
            f"{'present' if f'{run_id}/manifest.json' in got else 'MISSING'}; "
            f"twins and files outside the window: not copied ({len(got) - 1 - len(expected)} extra)"
        )
        console.print(
            f"[bold]5.[/] rdsrecorder verify --run-id {run_id}: "
            + ("[green]ok[/]" if verified.ok else "[red]problems[/]")
        )
        ok = report.exit_code == 0 and verified.ok and exact == len(expected)
        if len(got) - 1 != len(expected):
            ok = False
        return EXIT_OK if ok else EXIT_VERIFY
