"""Presentation of search results beyond the terminal table: one document (the --json data),
rendered as a self-contained HTML page, exported as CSV / M3U / path lists, and served by the
local web app (`soundsearch serve`). Nothing here prints; the CLI writes what it returns."""
