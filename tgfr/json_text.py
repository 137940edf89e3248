"""Parsing JSON from files a user hands tgfr (configs, manifests, protocols, summaries)."""

import json
from typing import Any


def parse_json(text: str) -> Any:
    """json.loads(text), where arrays or objects nested past Python's recursion limit (say
    '[' * 100000) are a json.JSONDecodeError like any other malformed JSON, not a RecursionError
    that the callers' "not valid JSON, naming the file" handling would miss."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", text, 0) from None
