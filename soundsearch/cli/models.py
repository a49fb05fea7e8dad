"""Placeholder: being written."""

from soundsearch.errors import SoundsearchError


def models() -> None:
    """Not available yet."""
    raise SoundsearchError("'models' is not implemented yet")
