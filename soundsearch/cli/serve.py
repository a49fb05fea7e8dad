"""`soundsearch serve`: the results page as a local web app."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from soundsearch.cli._common import StoreOption, err


def serve(
    store: StoreOption = None,
    port: Annotated[int, typer.Option("--port", metavar="N", min=0, max=65535, help="Port to listen on.")] = 8765,
    host: Annotated[
        str,
        typer.Option("--host", metavar="ADDRESS", help="Address to bind. The default serves this computer only; "
                     "anything else lets the network search and play your library."),
    ] = "127.0.0.1",
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", metavar="NAME|PATH", help="Model name or .safetensors path. Default: the shipped default model.", show_default=False),
    ] = None,
    max_upload: Annotated[int, typer.Option("--max-upload", metavar="MB", min=1, help="Largest query file accepted.")] = 200,
) -> None:
    """Search the store from a browser: drop a recording or click "more like this" on any result.

    The model and the search cache load once, so each query answers in a fraction of a second.
    Filters (require, exclude, minimum level, ranking mode), players that start at the matched
    time, and exports (JSON, CSV, M3U, paths) on every results page. Only files inside the
    store's indexed folders are served. Needs the [serve] extra.

    Example:  soundsearch serve --store ~/sound-store --port 8765
    """
    try:
        import uvicorn  # noqa: F401
        import starlette  # noqa: F401
        import multipart  # noqa: F401
    except ImportError:
        from soundsearch.errors import SoundsearchError

        raise SoundsearchError("serve needs the web extra: pip install 'soundsearch[serve]'") from None
    import uvicorn

    from soundsearch.paths import resolve_store_dir
    from soundsearch.present.app import create_app
    from soundsearch.store import Store

    store_dir = resolve_store_dir(store)
    Store.open(store_dir).close()  # a missing or damaged store fails here, as one line
    app = create_app(store_dir, model, max_upload)
    err.print(f"soundsearch: http://{host}:{port}/  (Ctrl-C stops)", highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
