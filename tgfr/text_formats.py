"""Parsing JSON and TOML from files a user hands tgfr (configs, manifests, protocols, summaries)."""

import json
import tomllib
from typing import Any


def parse_json(text: str) -> Any:
    """json.loads(text), where arrays or objects nested past Python's recursion limit (say
    '[' * 100000) are a json.JSONDecodeError like any other malformed JSON, not a RecursionError
    that the callers' "not valid JSON, naming the file" handling would miss."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", text, 0) from None


def parse_toml(text: str) -> dict[str, Any]:
    """tomllib.loads(text), where arrays or tables nested past Python's recursion limit are a
    tomllib.TOMLDecodeError like any other malformed TOML, for the same reason as parse_json."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("arrays or tables nested too deeply") from None
