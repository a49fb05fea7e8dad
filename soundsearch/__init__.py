"""soundsearch: search a sound library by example.

Data flow, one module per arrow (lower layers never import higher ones):

    audio -> features -> store -> model -> search -> cli (presentation)
    datasets -> pairs -> train ; metrics -> evaluate
"""

__version__ = "0.1.0"
