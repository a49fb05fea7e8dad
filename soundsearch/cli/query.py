"""Placeholder: being written."""

from soundsearch.errors import SoundsearchError


def query() -> None:
    """Not available yet."""
    raise SoundsearchError("'query' is not implemented yet")
