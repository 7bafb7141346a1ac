"""Serve an app the way `kueue-tes api` does: ``python -m tests.benchmarks.launch tes|starlette``.

``tes`` runs the production command as is. ``starlette`` runs the very same gunicorn
configuration (bind, workers, uvicorn worker class, access log off, keep-alive) with the bare
reference app swapped in for ``create_app``, so both differ in the app only.
"""

from __future__ import annotations

import sys
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

#: The reference body: the size and shape of a GetTask MINIMAL answer.
REFERENCE_BODY = {"id": "01hzzzzzzzzzzzzzzzzzzzzzzz", "state": "COMPLETE"}


async def _constant(request: Request) -> JSONResponse:
    """Return the constant body, whatever the id."""
    return JSONResponse(REFERENCE_BODY)


def reference_app() -> Starlette:
    """Return the bare Starlette app: one route, one constant small JSON body."""
    return Starlette(routes=[Route("/ga4gh/tes/v1/tasks/{id}", _constant, methods=["GET"])])


def main(argv: list[str]) -> None:
    """Run ``tes`` or ``starlette`` under gunicorn, configured by KUEUE_TES_* variables."""
    if argv not in (["tes"], ["starlette"]):
        sys.exit("usage: python -m tests.benchmarks.launch tes|starlette")
    import app.main
    from app import cli

    if argv == ["starlette"]:

        def _reference(*args: Any, **kwargs: Any) -> Any:
            return reference_app()

        # app.cli.api imports create_app when it runs, so this swaps the app and nothing else.
        app.main.create_app = _reference  # type: ignore[assignment]
    cli.main(["api"])


if __name__ == "__main__":
    main(sys.argv[1:])
