"""parse_json and parse_toml: every malformed input is a json.JSONDecodeError (tomllib.TOMLDecodeError), which
the readers turn into an error naming the file, not another exception that would name none."""

import csv
import json
import re
import sys
import tomllib

import pytest

from tgfr.text_formats import parse_json, parse_toml, read_csv_lines, read_csv_rows


@pytest.mark.parametrize("text, message", [
    ("[" * 100000 + "]" * 100000, "arrays or objects nested too deeply"),
    ('{"identity": ' + "7" * 5000 + "}", f"an integer of over {sys.get_int_max_str_digits()} digits"),
    ("-" + "9" * 4301, f"an integer of over {sys.get_int_max_str_digits()} digits"),
    ("{not json", "Expecting property name enclosed in double quotes"),
])
def test_malformed_json_is_a_json_decode_error(text, message):
    with pytest.raises(json.JSONDecodeError) as error:
        parse_json(text)
    assert error.value.msg == message


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"identity": ' + "7" * 5000 + "}"])
def test_a_json_error_without_a_place_names_none(text):
    """Both were placed at "line 1 column 1 (char 0)", where nothing is wrong."""
    with pytest.raises(json.JSONDecodeError) as error:
        parse_json(text)
    assert str(error.value) == error.value.msg


@pytest.mark.parametrize("text, repeat, key", [
    ('{"0.jpg": "a",\n "1.jpg": "b",\n "2.jpg": "c",\n "0.jpg": "d"}', '"0.jpg": "d"', "0.jpg"),
    # Decoded, "\u0030.jpg" is "0.jpg"; a key's text inside a string value is no key.
    ('[{"0.jpg": "a", "x": "\\"0.jpg\\": 1",\n\n  "\\u0030.jpg": "b"}]', '"\\u0030.jpg"', "0.jpg"),
    # json.loads builds the inner object first: its repeat is the one refused, though "a" repeats earlier.
    ('{"a": 1, "a": 2,\n "b": {"x": 1, "x": 2}}', '"x": 2', "x"),
    ('{"a": {"k": 1, "j": 2}, "b": [{"k": 3}, {"k": 4}],\n "a": 5}', '"a": 5', "a"),
])
def test_a_repeated_key_is_placed_at_its_second_occurrence(text, repeat, key):
    """It was placed at "line 1 column 1 (char 0)": in a 30,000-entry caption file, nowhere near it."""
    with pytest.raises(json.JSONDecodeError) as error:
        parse_json(text, unique_keys=True)
    position = text.rindex(repeat)
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    assert str(error.value) == (f"key {key!r} appears twice in one object: line {line} column {column} "
                                f"(char {position})")


def test_well_formed_json_reads_as_json_loads_reads_it():
    limit = sys.get_int_max_str_digits()
    text = json.dumps({"identity": int("7" * limit), "captions": ["a", "b"], "meta": {"k": [1.5, None, True]}})
    assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize("text, message", [
    ("a = " + "[" * 100000 + "]" * 100000, "arrays or tables nested too deeply"),
    ("seed = " + "7" * 5000, f"an integer of over {sys.get_int_max_str_digits()} digits"),
    ("seed = ", "Invalid value (at end of document)"),
])
def test_malformed_toml_is_a_toml_decode_error(text, message):
    with pytest.raises(tomllib.TOMLDecodeError, match=f"^{re.escape(message)}$"):
        parse_toml(text)



def test_csv_lines_are_read_with_their_line_numbers_past_the_csv_modules_field_limit():
    """Empty lines are left out; a record's number is that of its last line; the module's limit is put back."""
    limit = csv.field_size_limit()
    long = "x" * (limit + 1)
    text = f'a,b\n\n"c\nd",e\n{long}\n'
    assert read_csv_lines(text, "list f.csv") == [(1, ["a", "b"]), (4, ["c\nd", "e"]), (5, [long])]
    assert csv.field_size_limit() == limit


def test_a_csv_error_names_the_file_and_line(monkeypatch):
    """Should the field limit stay low (here: not raised), the csv.Error is a ValueError naming file and line."""
    limit = csv.field_size_limit()
    monkeypatch.setattr(csv, "field_size_limit", lambda *new_limit: limit)
    with pytest.raises(ValueError, match=re.escape(f"list f.csv:2: not valid CSV (field larger than field limit "
                                                   f"({limit}))")):
        read_csv_lines("a,b\nc," + "x" * (limit + 1) + "\n", "list f.csv")


@pytest.mark.parametrize("text, line", [('a\nb\n"c\nd\n', 3), ('a\n\n\n"c\nd\n', 4), ('"a\n', 1), ('a\n"b,c\n', 2)])
def test_a_csv_quote_that_never_closes_is_refused_naming_the_line_its_record_begins_on(text, line):
    """A reader that is not strict read the rest of the text as one field: entries lost without a word."""
    with pytest.raises(ValueError, match=re.escape(f"list f.csv:{line}: not valid CSV (a quote opened on this line or "
                                                   "after it never closes)")):
        read_csv_lines(text, "list f.csv")


@pytest.mark.parametrize("text, line", [("path,identity\na,1\n\n\"b,2\nc,3\n", 4), ('"path,identity\na,1\n', 1),
                                        ("path,identity\r\na,1\r\n\r\n\r\n\"b,2\r\nc,3\r\n", 5),
                                        ("path,identity\ra,1\r\r\"b,2\rc,3\r", 4),
                                        ('path,identity\n"a,1\n', 2)])
def test_a_csv_header_file_quote_that_never_closes_is_refused_naming_the_line_its_record_begins_on(text, line):
    """csv.DictReader skips empty lines without a row: the line after the last row was an empty one."""
    with pytest.raises(ValueError, match=re.escape(f"m.csv:{line}: not valid CSV (a quote opened on this line or "
                                                   "after it never closes)")):
        read_csv_rows(text, "m.csv", ["path"])


@pytest.mark.parametrize("read", [lambda text: read_csv_lines(text, "f.csv"),
                                  lambda text: read_csv_rows("path,identity\n" + text, "f.csv", ["path"])])
def test_text_after_a_closing_quote_is_refused_not_joined(read):
    """'a,"1"x' read as the identity "1x"."""
    with pytest.raises(ValueError, match=re.escape("not valid CSV (',' expected after '\"')")):
        read('a,"1"x\n')
    assert read('a,"1""x"\n') in ([(1, ["a", '1"x'])], (["path", "identity"], [(2, {"path": "a", "identity": '1"x'})]))

