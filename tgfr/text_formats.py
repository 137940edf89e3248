"""Parsing JSON, TOML and CSV from files a user hands tgfr (configs, manifests, protocols, summaries), and
checking that text tgfr writes into such files (or hands to a library that takes UTF-8 paths) is UTF-8."""

import contextlib
import csv
import dataclasses
import io
import json
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


def parse_json(text: str, unique_keys: bool = False) -> Any:
    """json.loads(text), where arrays or objects nested past Python's recursion limit (say
    '[' * 100000) and an integer longer than Python converts (sys.get_int_max_str_digits(), 4300 digits by
    default) are a json.JSONDecodeError like any other malformed JSON, not a RecursionError or plain
    ValueError that the callers' "not valid JSON, naming the file" handling would miss; these two name no
    position in their str(). unique_keys: an object whose key repeats is a JSONDecodeError naming it, placed at
    its second occurrence (json.loads keeps the last value without a word: a record of tgfr's own formats with
    two "identity" keys read as its second identity)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_key_object if unique_keys else None)
    except _RepeatedKey as repeated:
        message, position = f"key {repeated.key!r} appears twice in one object", _repeated_key_position(text)
        if position is None:
            raise _UnplacedJSONDecodeError(message, text, 0) from None
        raise json.JSONDecodeError(message, text, position) from None
    except RecursionError:
        raise _UnplacedJSONDecodeError("arrays or objects nested too deeply", text, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # int() refusing the digits: the one other ValueError json.loads raises
        raise _UnplacedJSONDecodeError(f"an integer of over {sys.get_int_max_str_digits()} digits", text, 0) from None


class _UnplacedJSONDecodeError(json.JSONDecodeError):
    """A JSONDecodeError whose place in the text is not known (json.loads gives none for a RecursionError or
    int()'s digit limit): its str() is the message alone, where JSONDecodeError's adds "line 1 column 1 (char
    0)", pointing the reader of a long file at its first character."""

    def __str__(self) -> str:
        return self.msg


class _RepeatedKey(Exception):
    """Raised by _unique_key_object, which json.loads hands no position, for parse_json to place. Not a
    ValueError: parse_json takes any other ValueError for int()'s digit limit."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_key_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    values = dict(pairs)
    if len(values) != len(pairs):
        raise _RepeatedKey(repeated_names(key for key, _ in pairs)[0])
    return values


# A JSON string, or an object's brace or colon outside one: all that places a key. Arrays, commas, numbers and
# literals are passed over.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}:]')


def _repeated_key_position(text: str) -> int | None:
    """The index in `text` (valid JSON up to that point) of the key _unique_key_object refused: json.loads builds
    an object at its closing brace, inner ones first, so it is the first object to close whose keys repeat, and
    in it the second occurrence of the first key to repeat (repeated_names' order). None if none is found."""
    objects: list[tuple[set[str], list[int]]] = []  # per open object: its keys so far, where its first repeat is
    previous = None
    for token in _JSON_TOKEN.finditer(text):
        if token[0] == "{":
            objects.append((set(), []))
        elif token[0] == ":" and objects and previous is not None and previous[0][0] == '"':  # the key before it
            keys, repeats = objects[-1]
            key = json.loads(previous[0])  # decoded: "\u0030.jpg" repeats "0.jpg"
            if key in keys and not repeats:
                repeats.append(previous.start())
            keys.add(key)
        elif token[0] == "}" and objects:
            _, repeats = objects.pop()
            if repeats:
                return repeats[0]
        previous = token
    return None


def repeated_names(names: Iterable[str]) -> list[str]:
    """The names that occur more than once in `names` (a CSV header's columns, an object's keys), each once, in
    the order of their second occurrence."""
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def read_csv_rows(text: str, where: str, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header of CSV `text` and its rows, each as (line number, {column: cell}); a row that ends before an
    optional column (one not in `required`) has None there. Refused with a ValueError naming `where` (the file)
    and the line: a header that lacks a `required` column or repeats one (csv.DictReader keeps the last one's
    cell: identity 8 read for 7), a row with cells past the header's last column (DictReader keeps them apart,
    where a reader of columns misses them) or one that ends before a `required` column ("a.png,7,train" read
    as a record without captions), and a malformed file.

    The csv module reads records itself: a quoted field may hold a newline, and only \\r and \\n end a line
    (str.splitlines would also split at U+2028, U+0085, ... inside a field)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, dict]] = []
    header_end = 0
    # DictReader's line_num lags a row
    with _csv_errors_named(text, where, lambda: reader.reader.line_num, lambda: rows[-1][0] if rows else header_end):
        header = reader.fieldnames or []
        header_end = reader.reader.line_num
        if missing := [name for name in required if name not in header]:
            raise ValueError(f"{where}:1: the CSV header lacks column(s) {', '.join(missing)}")
        if repeated := repeated_names(header):
            raise ValueError(f"{where}:1: the CSV header repeats column(s) {', '.join(map(repr, repeated))}")
        for row in reader:
            if None in row or any(row[name] is None for name in required):
                cells = len(header) + len(row.get(None, ())) - list(row.values()).count(None)
                raise ValueError(f"{where}:{reader.line_num}: the row has {cells} cell{'s' * (cells != 1)}, the "
                                 f"header {len(header)} columns ({', '.join(header)})")
            rows.append((reader.line_num, row))
    return header, rows


def read_csv_lines(text: str, where: str) -> list[tuple[int, list[str]]]:
    """The records of CSV `text` that has no header, each as (the number of its last line, its cells); empty
    lines are left out. A malformed file is a ValueError naming `where` (the file) and the line, as in
    read_csv_rows, whose field size limit this shares."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    with _csv_errors_named(text, where, lambda: reader.line_num, lambda: rows[-1][0] if rows else 0):
        rows.extend((reader.line_num, row) for row in reader)
    return [(line_number, row) for line_number, row in rows if row]


@contextlib.contextmanager
def _csv_errors_named(text: str, where: str, line_number: Callable[[], int],
                      last_record_end: Callable[[], int]) -> Iterator[None]:
    """Reading CSV `text` (with a strict reader) within the block: the csv module's field size limit raised to
    the text's length, and a csv.Error raised as a ValueError naming `where` and line_number(). No field is
    longer than the file: tgfr writes cells of any size (many long captions), past the module's default limit
    of 131072 characters. A reader that is not strict took a quote that never closes for a field holding the
    rest of the file, every later record lost without a word (split list entry "a" read as "a\nb\nc"); a
    strict one fails at the end of the text, so that error names the first line after last_record_end() (the
    last line of the last record read, 0 if none) that is not empty, where the quote's record begins. The limit
    is module-wide, so it is put back at once."""
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(max(previous_limit, len(text)))
    try:
        yield
    except csv.Error as error:
        if str(error) == "unexpected end of data":  # in a quoted field: this project's readers take no escapechar
            # The record begins at the first line after the last one read that is not empty (csv.DictReader skips
            # empty lines without counting them as rows). Lines end as the csv module reads them.
            lines = re.split(r"\r\n|\r|\n", text)
            start = last_record_end()
            while start < len(lines) and not lines[start]:
                start += 1
            raise ValueError(f"{where}:{start + 1}: not valid CSV (a quote opened on this line or after it never "
                             "closes)") from None
        raise ValueError(f"{where}:{line_number()}: not valid CSV ({error})") from None
    finally:
        csv.field_size_limit(previous_limit)


def parse_toml(text: str) -> dict[str, Any]:
    """tomllib.loads(text), where arrays or tables nested past Python's recursion limit are a
    tomllib.TOMLDecodeError like any other malformed TOML, for the same reason as parse_json. A leading
    byte-order mark, which some editors write (Windows Notepad), is skipped: tomllib took it for a
    statement ("Invalid statement (at line 1, column 1)", pointing at nothing visible). An integer past
    Python's digit limit is a TOMLDecodeError too, as in parse_json."""
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise tomllib.TOMLDecodeError("arrays or tables nested too deeply") from None
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:  # int() refusing the digits
        raise tomllib.TOMLDecodeError(f"an integer of over {sys.get_int_max_str_digits()} digits") from None


def check_utf8(key: str, value: Any, need: str = "as config.toml is",
               remedy: str = "reach the file through a UTF-8 name, e.g. a symlink",
               cause: str = "a non-UTF-8 byte of a file name?") -> None:
    """Every string of `value` (a config dataclass, whose fields' dotted keys start with `key`, a list
    or a table) encodes to UTF-8; the error says why it must (`need`: what writes or reads it), where
    the bad character likely came from (`cause`) and what to do (`remedy`). A lone surrogate does
    not: Python's stand-in for a byte of a non-UTF-8 file name, e.g. one passed in
    `--set data.manifest=...` or `--out`, or a JSON escape such as "\\ud800"."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            check_utf8(f"{key}.{f.name}" if key else f.name, getattr(value, f.name), need, remedy, cause)
    elif isinstance(value, (list, dict)):
        for item in (*value, *value.values()) if isinstance(value, dict) else value:
            check_utf8(key, item, need, remedy, cause)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"{key} must be encodable as UTF-8, {need}, got {value!r} (a lone surrogate at "
                             f"position {error.start}: {cause} {remedy})") from None


def check_caption_utf8(key: str, caption: str) -> None:
    """`caption` encodes to UTF-8, as the text encoder's tokenizer needs (it raises a TypeError naming
    no caption otherwise); `key` names the caption in the error (file and line, or list index)."""
    check_utf8(key, caption, need="as the text encoder's tokenizer needs",
               cause='a JSON escape such as "\\ud800" that is half of a character?', remedy="fix the caption")
