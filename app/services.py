"""What the HTTP handlers share within one app: settings, store, queue, auth, routes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import flask

from app.auth import Authenticator
from app.intake import Intake
from app.queue import TaskQueue
from app.routing import Routes
from app.settings import Settings
from app.store.base import TaskStore

EXTENSION = "kueue_tes"


@dataclass
class Services:
    """The app's collaborators, created by create_app and kept on the Flask app."""

    settings: Settings
    store: TaskStore
    queue: TaskQueue
    auth: Authenticator
    routes: Routes
    started_at: float = field(default_factory=time.time)
    #: GetTask, ListTasks and CreateTask are answered in front of Connexion (app.frontdoor);
    #: the equivalence tests turn this off to reach the spec-driven routes, the reference.
    fast_paths: bool = True
    intake: Intake = field(init=False)

    def __post_init__(self) -> None:
        self.intake = Intake(self.store, self.queue)


def current() -> Services:
    """Return the Services of the app serving this request."""
    services: Services = flask.current_app.extensions[EXTENSION]
    return services
