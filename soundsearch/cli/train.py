"""Placeholder: being written."""

from soundsearch.errors import SoundsearchError


def train() -> None:
    """Not available yet."""
    raise SoundsearchError("'train' is not implemented yet")
