"""Searching a store: the engine (kernel, cache, search), the ranking modes and duplicate finding."""
