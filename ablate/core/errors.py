"""User-facing errors: one clear line, no traceback (the CLI prints str(err) and exits 2)."""
import difflib


class AblateError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def type_name(value) -> str:
    """A value's type as a grid's author calls it: list and mapping, not the YAML loader's classes."""
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def value_text(value) -> str:
    """A config value as every command writes it (plan, --where, report, query): no value is null."""
    return "null" if value is None else str(value)


def closest(name: str, valid) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
