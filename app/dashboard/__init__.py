"""The web dashboard: task list, task page, queues (server-rendered, behind the API\x27s auth)."""
