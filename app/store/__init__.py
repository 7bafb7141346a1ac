"""The task store: pick the implementation the settings ask for."""

from __future__ import annotations

from app.settings import Settings
from app.store.base import TaskStore


def open_store(settings: Settings) -> TaskStore:
    """Return MongoStore when ``settings.mongo_uri`` is set, else the embedded SqliteStore."""
    # Imported here so that only the store modules load pymongo or sqlite3 (design section 3).
    if settings.mongo_uri:
        from app.store.mongo import MongoStore

        return MongoStore.from_uri(
            settings.mongo_uri, settings.mongo_database, settings.default_queue
        )
    from app.store.sqlite import SqliteStore

    return SqliteStore(settings.store_path(), default_queue=settings.default_queue)
