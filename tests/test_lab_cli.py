"""``rdsrecorder lab`` commands (the Typer app in ``rdsrecorder_lab.cli``): bad input is one
``error: ...`` line and exit 2, never a traceback; ``generate`` writes a fleet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rdsrecorder_lab.cli import lab_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--s3-port", "70000"], "--s3-port must be from 0"),
        (["serve", "--port", "-1"], "--port must be from 0"),
        (["serve", "--latency-ms", "nan"], "latency_ms must be a number >= 0"),
        (["serve", "--account-burst", "-5"], "account_burst must be >= 0"),
        (["serve", "--short-body-fraction", "2"], "short_body_fraction must be a number"),
        (["serve", "--stream-mbps", "nan"], "stream_mbps must be a number > 0"),
        (["serve", "--list-error", "Teapot"], "list_error must be one of"),
        (["serve", "--s3", "minio"], "--s3 must be one of"),
        (["serve", "--size-mb", "5-1"], "size range must be positive"),
        (["serve", "--generate-hours", "-2"], "--generate-hours must be >= 0"),
        (["serve", "--instance", "bad_id"], "is not a DB instance identifier"),
        (["generate", "{file}"], "is not a directory"),
        (["generate", "{dir}", "--size-mb", "lots"], "size range must look like"),
        (["generate", "{dir}", "--rotation", "week"], "--rotation must be hour, minute or day"),
        (["generate", "{dir}", "--hours", "0"], "--hours must be at least 1"),
        (["generate", "{dir}", "--rotation-minutes", "0"], "--rotation-minutes must be from 1"),
        (["generate", "{dir}", "--files", "0"], "--files must be at least 1"),
        (["generate", "{dir}", "--instances", "0"], "--instances must be from 1"),
        (["demo", "--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    args = [a.format(file=file, dir=tmp_path / "d") for a in args]
    if args[0] == "serve":
        args += ["--s3", "none"] if "--s3" not in args else []
    result = CliRunner().invoke(lab_cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "d").exists()  # nothing written before the check


def test_serve_refuses_a_data_path_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    result = CliRunner().invoke(lab_cli, ["serve", "--data", str(file), "--s3", "none"])
    assert result.exit_code == 2
    assert result.stderr == f"error: --data {file} is not a directory\n"


def test_generate_a_fleet(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        lab_cli,
        ["generate", str(tmp_path), "--instances", "3", "--files", "2", "--rotation", "minute"],
    )
    assert result.exit_code == 0, result.output
    assert "3 instances, 6 csvlog files" in result.stdout
    config = json.loads((tmp_path / "lab.json").read_text())
    assert sorted(config["instances"]) == ["lab-db-000", "lab-db-001", "lab-db-002"]
    assert config["instances"]["lab-db-001"]["tags"] == {"fleet": "lab-db", "index": "1"}
    assert len(list((tmp_path / "lab-db-002" / "error").glob("*.csv"))) == 2
