"""Serve an app the way `kueue-tes api` does: ``python -m tests.benchmarks.launch <target>``.

``tes`` runs the production command as is. ``starlette`` and ``starlette-create`` run the very
same gunicorn configuration (bind, workers, uvicorn worker class, access log off, keep-alive)
with a bare reference app (``tests.benchmarks.reference``) swapped in for ``create_app``, so
they differ in the app only.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.benchmarks.reference import REFERENCE_BODY, constant_app

__all__ = ["REFERENCE_BODY", "main", "reference_app"]

TARGETS = ("tes", "starlette", "starlette-create")


def reference_app() -> Any:
    """Return the bare Starlette app: one route, one constant small JSON body."""
    return constant_app()


def main(argv: list[str]) -> None:
    """Run a target under gunicorn, configured by KUEUE_TES_* variables."""
    if len(argv) != 1 or argv[0] not in TARGETS:
        sys.exit(f"usage: python -m tests.benchmarks.launch {'|'.join(TARGETS)}")
    import app.main
    from app import cli
    from tests.benchmarks import reference

    if argv[0] != "tes":

        def _reference(settings: Any, *args: Any, **kwargs: Any) -> Any:
            if argv[0] == "starlette":
                return reference.constant_app()
            return reference.create_app(settings)

        # app.cli.api imports create_app when it runs, so this swaps the app and nothing else.
        app.main.create_app = _reference  # type: ignore[assignment]
    cli.main(["api"])


if __name__ == "__main__":
    main(sys.argv[1:])
