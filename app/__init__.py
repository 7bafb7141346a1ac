"""kueue-tes: the HTTP side (API, store, queue, settings, CLI)."""
