"""syncbridge.tomlsrc: TOML parse, the line of a table or key, did-you-mean (the configuration's and the
manifests' one home for them)."""

from __future__ import annotations

import pytest

from syncbridge import tomlsrc
from syncbridge.tomlsrc import Lines, did_you_mean, error_line, line_of, loads

TEXT = """\
top = 1
remote.bucket = "b"
"quoted" = 2

[remote]
endpoint = "http://x"
'bucket' = "c"
extra.x = 1

[remote.more]
a = 1

[ "watch" ]  # a comment
dir = "/out"

[[folder]]
src = "a"

[[folder]]
src = "b"
dst = "c"

[folder.sub]
x = 1

[[model]]
name = "m"
hf = { repo = "o/r", file = "f" }
"""

CASES = [
    (None, "top", None, 1),
    (None, "quoted", None, 3),
    (None, "remote", None, 2),  # the dotted key above every table comes first
    (None, "watch", None, 13),
    (None, "missing", None, None),
    ("remote", None, None, 5),
    ("remote", "endpoint", None, 6),
    ("remote", "bucket", None, 2),  # `remote.bucket = ...` at the top
    ("remote", "extra", None, 8),
    ("remote", "more", None, 10),  # a key that is a table: its header
    ("remote", "nothing", None, None),
    ("watch", None, None, 13),
    ("watch", "dir", None, 14),
    ("folder", None, None, 16),
    ("folder", None, 0, 16),
    ("folder", None, 1, 19),
    ("folder", None, 2, None),
    ("folder", "src", 0, 17),
    ("folder", "src", 1, 20),
    ("folder", "dst", 1, 21),
    ("folder", "dst", 0, None),
    ("folder", "x", 1, None),  # under [folder.sub]: another table
    ("folder", "sub", None, 23),
    ("model", "hf", 0, 28),
    ("model", None, 0, 26),
]


@pytest.mark.parametrize("section, key, index, line", CASES)
def test_line_of(section, key, index, line) -> None:
    assert line_of(TEXT, section, key, index=index) == line
    assert Lines(TEXT).of(section, key, index=index) == line


def test_did_you_mean() -> None:
    assert did_you_mean("cache_prefx", ["cache_prefix", "parallel"]) == "; did you mean 'cache_prefix'?"
    assert did_you_mean("zzz", ["cache_prefix"]) == ""


def test_loads_and_the_line_of_a_syntax_error() -> None:
    assert loads('a = 1\n[b]\nc = "d"\n') == {"a": 1, "b": {"c": "d"}}
    with pytest.raises(tomlsrc.TOMLDecodeError) as caught:
        loads("a = 1\nb = = 2\n")
    assert error_line(caught.value) == 2
    assert error_line(ValueError("no line here")) is None


def test_value_writes_what_loads_reads_back() -> None:
    from syncbridge.tomlsrc import value

    doc = {"s": 'quote " and \\ and \u00e9 and\nnewline', "n": 42, "b": True,
           "t": {"repo": "org/m", "version_id": 7, "flag": False}}
    text = "\n".join(f"{k} = {value(v)}" for k, v in doc.items())
    assert loads(text) == doc
