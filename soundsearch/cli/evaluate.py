"""Placeholder: being written."""

from soundsearch.errors import SoundsearchError


def eval_() -> None:
    """Not available yet."""
    raise SoundsearchError("'eval_' is not implemented yet")
