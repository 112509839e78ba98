from __future__ import annotations

import pendulum
import pytest

from rdsrecorder.errors import ConfigError
from rdsrecorder.window import (
    Mode,
    classify,
    parse_when,
    validate_snapshot_start,
    validate_sync_window,
)

NOW = pendulum.datetime(2024, 2, 4, 13, 30, tz="UTC")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-02-04 13:00:00.000 UTC", pendulum.datetime(2024, 2, 4, 13, tz="UTC")),
        ("2024-02-04 13:00:00 UTC", pendulum.datetime(2024, 2, 4, 13, tz="UTC")),
        ("2024-02-04 13:00", pendulum.datetime(2024, 2, 4, 13, tz="UTC")),
        ("2024-02-04T13:00:00Z", pendulum.datetime(2024, 2, 4, 13, tz="UTC")),
        ("2024-02-04T14:00:00+01:00", pendulum.datetime(2024, 2, 4, 13, tz="UTC")),
        ("2024-02-04T08:00:00-05:00", pendulum.datetime(2024, 2, 4, 13, tz="UTC")),
        ("now", NOW),
        ("NOW", NOW),
        ("now-2h", NOW.subtract(hours=2)),
        ("now + 30m", NOW.add(minutes=30)),
        ("now-3d", NOW.subtract(days=3)),
    ],
)
def test_parse_when(text: str, expected: pendulum.DateTime) -> None:
    got = parse_when(text, NOW)
    assert got == expected
    assert got.timezone_name == "UTC"


@pytest.mark.parametrize("text", ["", "yesterday", "2024-02-30 10:00", "13:00 tomorrow", "now-2x"])
def test_parse_when_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_when(text, NOW, option="--start")
    assert "--start" in str(err.value)
    assert "\n" not in str(err.value)


def test_modes_at_every_edge() -> None:
    past, future = NOW.subtract(hours=1), NOW.add(hours=1)
    assert classify(past, NOW.subtract(minutes=1), NOW) is Mode.DOWNLOAD_AND_FINISH
    assert classify(past, NOW, NOW) is Mode.DOWNLOAD_AND_FINISH  # finish == now is the past
    assert classify(past, future, NOW) is Mode.DOWNLOAD_AND_SYNC
    assert classify(NOW, future, NOW) is Mode.DOWNLOAD_AND_SYNC  # start == now: nothing to wait
    assert classify(past, None, NOW) is Mode.DOWNLOAD_AND_SYNC
    assert classify(future, future.add(hours=1), NOW) is Mode.WAIT_AND_SYNC
    assert classify(future, None, NOW) is Mode.WAIT_AND_SYNC
    assert Mode.WAIT_AND_SYNC.label == "Wait & Sync"


def test_window_validation() -> None:
    validate_sync_window(NOW.subtract(days=6, hours=23), NOW, NOW)
    with pytest.raises(ConfigError, match="must be after start"):
        validate_sync_window(NOW, NOW, NOW)
    with pytest.raises(ConfigError, match="must be after start"):
        validate_sync_window(NOW, NOW.subtract(seconds=1), NOW)
    with pytest.raises(ConfigError, match="at most 7 days"):
        validate_sync_window(NOW.subtract(days=7, seconds=1), None, NOW)
    validate_snapshot_start(NOW.add(seconds=1), NOW)
    with pytest.raises(ConfigError, match="in the past"):
        validate_snapshot_start(NOW, NOW)
