"""How the lab cuts files into portions, at the edges (no HTTP: the emulator tests cover that)."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rdsrecorder_lab.portion import (
    TRUNCATION_SUFFIX,
    BinaryDataError,
    MarkerError,
    format_marker,
    parse_marker,
    read_portion,
    read_tail,
    to_xml_text,
)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    return path


def test_markers() -> None:
    assert parse_marker("0") == 0
    assert parse_marker("12:18499") == 18499
    marker = format_marker("error/postgresql.log.2024-03-04-19.csv", 777)
    assert marker.endswith(":777") and parse_marker(marker) == 777
    for bad in ("", "1", ":5", "a:b", "1:-5", "1:2:3", " 1:2"):
        with pytest.raises(MarkerError):
            parse_marker(bad)


def test_empty_file_and_offset_past_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, b"")
    portion = read_portion(path, 0, 10)
    assert (portion.data, portion.next_offset, portion.pending) == (b"", 0, False)
    path = write(tmp_path, b"a\n")
    portion = read_portion(path, 50, 10)  # the file was replaced by a shorter one
    assert (portion.data, portion.pending) == (b"", False)


def test_lines_and_pending(tmp_path: Path) -> None:
    path = write(tmp_path, b"a\nbb\n\nccc")
    first = read_portion(path, 0, 2)
    assert (first.data, first.next_offset, first.pending) == (b"a\nbb\n", 5, True)
    rest = read_portion(path, first.next_offset, 10)
    assert (rest.data, rest.next_offset, rest.pending) == (b"\nccc", 9, False)


def test_lines_spanning_read_chunks(tmp_path: Path) -> None:
    line = b"y" * 300_000 + b"\n"
    path = write(tmp_path, line * 8)  # lines cross the 1 MiB read chunks
    portion = read_portion(path, 0, 3, limit_bytes=10**7)
    assert portion.data == line * 3 and portion.pending
    portion = read_portion(path, portion.next_offset, 5, limit_bytes=10**7)
    assert portion.data == line * 5 and not portion.pending


def test_cut_at_a_character_boundary(tmp_path: Path) -> None:
    text = "é" * 100 + "\n"  # 2 bytes each
    path = write(tmp_path, text.encode())
    portion = read_portion(path, 0, 1, limit_bytes=51 + len(TRUNCATION_SUFFIX))
    assert portion.truncated
    assert portion.data.endswith(TRUNCATION_SUFFIX)
    kept = portion.data[: -len(TRUNCATION_SUFFIX)]
    assert kept.decode() == "é" * 25  # 51 bytes would split a character: 50 kept
    assert portion.next_offset == len(text.encode())


def test_incomplete_character_at_the_end_is_held_back(tmp_path: Path) -> None:
    for partial in ("€".encode()[:1], "€".encode()[:2], "😀".encode()[:3]):
        path = write(tmp_path, b"ok\nx" + partial)
        portion = read_portion(path, 0, 10)
        assert portion.data == b"ok\nx"
        assert portion.next_offset == 4
    path = write(tmp_path, b"ok\nx" + "😀".encode())
    assert read_portion(path, 0, 10).data == b"ok\nx" + "😀".encode()


def test_tail(tmp_path: Path) -> None:
    path = write(tmp_path, b"1\n2\n3\n4")
    assert read_tail(path, 1).data == b"4"
    assert read_tail(path, 2).data == b"3\n4"
    assert read_tail(path, 10).data == b"1\n2\n3\n4"
    path = write(tmp_path, b"1\n2\n3\n")
    tail = read_tail(path, 2)
    assert (tail.data, tail.start_offset, tail.next_offset, tail.pending) == (
        b"2\n3\n",
        2,
        6,
        False,
    )
    assert read_tail(write(tmp_path, b""), 5).data == b""


def test_xml_text_round_trips_through_an_xml_parser() -> None:
    text = "a & b < c > d\r\ne\rf\tg \"h\" 'i' ü 😀 ]]> &#13;\n"
    escaped = to_xml_text(text.encode())
    parsed = ET.fromstring(f"<LogFileData>{escaped}</LogFileData>").text
    assert parsed == text
    for binary in (b"nul \x00 byte", b"bell \x07", b"\xff\xfe invalid utf-8", "\ufffe".encode()):
        with pytest.raises(BinaryDataError, match="binary data"):
            to_xml_text(binary)


@pytest.mark.parametrize("seed", range(4))
def test_xml_text_agrees_with_what_xml_allows(seed: int) -> None:
    """Random texts near the edges (neighbours of U+FFFE/U+FFFF, control characters, the
    escaped ones): refused exactly when XML 1.0 cannot carry them, else they round-trip."""
    rng = random.Random(seed)
    alphabet = [*'a&<>\r\n\t"', "ü", "\ufff0", "\uffef", "\ufffd", "\ufffe", "\uffff"]
    alphabet += ["\x00", "\x08", "\x0b", "\x1f", "\U0001f600", "\ue000", "\u07ff", "\x7f"]
    forbidden = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        if forbidden.search(text):
            with pytest.raises(BinaryDataError):
                to_xml_text(text.encode())
        else:
            escaped = to_xml_text(text.encode())
            assert (ET.fromstring(f"<x>{escaped}</x>").text or "") == text
