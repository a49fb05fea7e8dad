"""Placeholder: being written."""

from soundsearch.errors import SoundsearchError


def index() -> None:
    """Not available yet."""
    raise SoundsearchError("'index' is not implemented yet")


def status() -> None:
    """Not available yet."""
    raise SoundsearchError("'status' is not implemented yet")
