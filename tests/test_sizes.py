import pytest

from leakcheck.sizes import format_bytes, format_delta, parse_size


@pytest.mark.parametrize(
    "text,expected",
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("64 MiB", 64 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("512 KiB", 512 * 1024),
        ("2 kB", 2000),
        ("3g", 3 * 2**30),
        (" 7 B ", 7),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [("12 parsecs", "unknown unit 'parsecs'"), ("lots", "invalid size 'lots'"), (-1, "negative"), (True, "got True")],
)
def test_parse_size_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_format_bytes():
    assert format_bytes(None) == "n/a"
    assert format_bytes(999) == "999 B"
    assert format_bytes(2048) == "2.00 KiB"
    assert format_bytes(1_438_427_256) == "1.34 GiB"
    assert format_bytes(-3 * 2**20) == "-3.00 MiB"
    assert format_delta(0) == "0 B" and format_delta(2**20) == "+1.00 MiB" and format_delta(None) == "n/a"
