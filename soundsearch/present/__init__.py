"""Presentation of search results beyond the terminal table: one document (the --json data),
rendered as a self-contained HTML page, exported as CSV / M3U / path lists, and served by the
local web app (`soundsearch serve`). Nothing here prints; the CLI writes what it returns.

    document.py  the results as one JSON document that the page, the exports and --json share
    explain.py   notes on what the filters removed
    html.py      the HTML page
    export.py    CSV, M3U and path lists
    thumbs.py    waveform thumbnails
    app.py       `soundsearch serve`: the routes
    service.py   the store, model and engine the app loads once, on one worker thread
    requests.py  the app's request parameters
"""
