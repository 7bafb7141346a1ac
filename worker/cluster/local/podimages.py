"""The images of one pod's containers: pulled before each start, held until the pod ends.

Containers whose image is kueue-tes's own (``KUEUE_TES_IMAGE``: setup, sequencer, finish) run
this very program on the host's root file system, as every container does with
``KUEUE_TES_LOCAL_IMAGES=host``. Every other container runs on its image's root: pulled (or
found in the cache) as kubelet would before starting it, with a writable layer per start where
overlays can be mounted, read-only where they cannot or where the container's securityContext
asks for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.settings import Settings
from worker.cluster.local import imageroot, layers, podstatus, reference, volumes
from worker.cluster.local.imageroot import Command, ImageRoot, Root
from worker.cluster.local.images import ERR_IMAGE_PULL, Image, ImageError, ImageStore
from worker.cluster.local.layers import Layers
from worker.cluster.local.podstatus import ContainerState
from worker.cluster.local.registry import Registry, load_credentials

logger = logging.getLogger(__name__)


@dataclass
class ImageSource:
    """What the local runtime runs images with: the cache, and how containers get their roots."""

    store: ImageStore
    host_images: frozenset[str]  # our own image: containers that run this program on the host
    overlay: bool  # writable layers can be mounted here
    volatile: bool = True
    why_read_only: str = ""  # why not, when not
    backoff: float = 1.0  # seconds before the first retry of a failed pull; doubles up to 30x
    pulls: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(4))

    def pull(self, image: str, policy: str) -> Future[Image]:
        """Pull in a thread of its own (a daemon: a hung registry never holds the server up)."""
        future: Future[Image] = Future()

        def run() -> None:
            with self.pulls:
                try:
                    future.set_result(self.store.pull(image, policy))
                except BaseException as exc:
                    future.set_exception(exc)

        threading.Thread(target=run, name=f"pull {image}", daemon=True).start()
        return future


def from_settings(settings: Settings) -> ImageSource | None:
    """Return how the local runtime pulls and runs images, or None in host mode; raise
    ValueError for a registry auth file that cannot be read."""
    if settings.local_images == "host":
        return None
    registry = Registry(
        credentials=load_credentials(settings.registry_auth_file),
        insecure=frozenset(settings.insecure_registries),
    )
    store = ImageStore(settings.data_dir / "images", registry, settings.image_cache_bytes)
    (settings.data_dir / "local").mkdir(parents=True, exist_ok=True)
    overlay, volatile, why = layers.probe(settings.data_dir / "local")
    if not overlay:
        logger.warning("containers get their images' root file systems read-only: %s", why)
    return ImageSource(store, frozenset({settings.image}), overlay, volatile, why)


class PodImages:
    """The images of one pod: what each container runs on, and the layers it writes."""

    def __init__(
        self,
        source: ImageSource | None,
        pod_dir: Path,
        wait: Callable[[float | None], None],
        stopped: Callable[[], bool],
        report: Callable[[], None],
        wake: Callable[[], None],
    ) -> None:
        """Pull through ``source`` (None: every container on the host's root) for a pod whose
        runner waits with ``wait``, stops when ``stopped``, publishes its status with ``report``
        and wakes up with ``wake``."""
        self._source = source
        self._wait, self._stopped, self._report = wait, stopped, report
        self._wake, self._backoff = wake, source.backoff if source else 1.0
        self._images: dict[str, Image] = {}  # container → its image, held
        self._roots: dict[str, str] = {}  # container → its current root on the host
        self._layers = Layers(pod_dir / "layers", source.volatile if source else True)

    def on_host(self, container: Mapping[str, Any]) -> bool:
        """Tell whether the container runs on the host's root (ours, or host mode)."""
        return self._source is None or str(container.get("image")) in self._source.host_images

    def prepare(
        self, container: Mapping[str, Any], wake: Callable[[], None]
    ) -> Future[Image] | None:
        """Return None when the image is ready, else a pull under way (``wake`` when done)."""
        if self._source is None or self.on_host(container):
            return None
        name, image = str(container["name"]), str(container.get("image"))
        policy = reference.pull_policy(image, container.get("imagePullPolicy"))
        found = self._source.store.cached(image, policy)
        if found is not None:
            self._keep(name, found)
            return None
        future = self._source.pull(image, policy)
        future.add_done_callback(lambda _: wake())
        return future

    def take(self, container: Mapping[str, Any], pull: Future[Image]) -> ImageError | None:
        """Keep a finished pull's image; return the error that ended it, if one did."""
        try:
            found = pull.result()
        except ImageError as exc:
            return exc
        except Exception as exc:  # a bug must read as a pull failure, not kill the pod
            logger.exception("pulling %s failed", container.get("image"))
            return ImageError("ErrImagePull", f"the local runtime failed pulling: {exc}")
        self._keep(str(container["name"]), found)
        return None

    def _keep(self, name: str, image: Image) -> None:
        before = self._images.get(name)
        self._images[name] = image
        if before is not None and self._source is not None:
            self._source.store.release(before)

    def image_id(self, name: str) -> tuple[str, str] | None:
        """Return the reference and repo digest a container's image resolved to."""
        image = self._images.get(name)
        return None if image is None else (image.reference, image.image_id)

    def ready(self, container: Mapping[str, Any], state: ContainerState) -> bool:
        """Have the container's image ready before a start (:func:`wait_ready`)."""
        return wait_ready(
            self,
            container,
            state,
            wait=self._wait,
            stopped=self._stopped,
            report=self._report,
            wake=self._wake,
            backoff=self._backoff,
        )

    def start(
        self,
        container: Mapping[str, Any],
        volumes_on_host: Mapping[str, str],
        fields: Mapping[str, str],
        read_only: frozenset[str],
    ) -> None:
        """Give one start of the container its root (a fresh writable layer where possible),
        and check that it can start there, as kubelet would (:func:`volumes.check_container`)."""
        name = str(container["name"])
        image = self._images.get(name)
        if image is not None and self._source is not None:
            self._roots[name] = (
                self._layers.add(name, image.root) if self._source.overlay else image.root
            )
        found = self.sandbox(container, fields)
        volumes.check_container(container, volumes_on_host, fields, read_only, found)

    def sandbox(
        self, container: Mapping[str, Any], fields: Mapping[str, str]
    ) -> tuple[Root, Command] | None:
        """Return the root and command of the container's current start, None on the host."""
        name = str(container["name"])
        image = self._images.get(name)
        if image is None or name not in self._roots:
            return None
        writable = self._source is not None and self._source.overlay
        spec = ImageRoot(
            self._roots[name], writable, image.env, image.entrypoint, image.cmd, image.working_dir
        )
        root = Root(spec.path, writable, imageroot.read_only(container), imageroot.HOST_FILES)
        command = Command(
            imageroot.argv(container, fields, spec),
            imageroot.environment(container, fields, spec),
            imageroot.working_dir(container, spec),
        )
        return root, command

    def release(self) -> None:
        """Detach the pod's layers and let the cache evict its images again."""
        self._layers.release()
        for image in self._images.values():
            if self._source is not None:
                self._source.store.release(image)
        self._images.clear()


def wait_ready(
    images: PodImages,
    container: Mapping[str, Any],
    state: ContainerState,
    *,
    wait: Callable[[float | None], None],
    stopped: Callable[[], bool],
    report: Callable[[], None],
    wake: Callable[[], None],
    backoff: float,
) -> bool:
    """Have a container's image ready before its start, as kubelet does; False once stopped.

    While a pull fails the container waits with kubelet's reasons: ``ErrImagePull`` with the
    registry's words, then ``ImagePullBackOff`` until the next try, the back-off doubling from
    ``backoff`` seconds up to thirty times that. A name that is no image reference
    (``InvalidImageName``) or a missing image under ``Never`` is not tried again. ``wait`` is
    the pod's own wait, so that its other containers are looked after meanwhile.
    """
    delay = backoff
    while not stopped():
        pull = images.prepare(container, wake)
        while pull is not None and not pull.done() and not stopped():
            wait(None)
        if stopped():
            return False
        error = None if pull is None else images.take(container, pull)
        if error is None:
            found = images.image_id(str(container["name"]))
            if found is not None:
                state.image, state.image_id = found
            return True
        state.state = podstatus.waiting(error.reason, str(error))
        report()
        if error.reason != ERR_IMAGE_PULL:
            while not stopped():
                wait(None)  # kubelet does not try a bad name again; the pod waits to be deleted
            return False
        due = time.monotonic() + delay
        while not stopped() and time.monotonic() < due:
            wait(due - time.monotonic())
        image = container.get("image")
        text = f'Back-off pulling image "{image}": {ERR_IMAGE_PULL}: {error}'
        state.state = podstatus.waiting("ImagePullBackOff", text)
        report()
        delay = min(delay * 2, 30 * backoff)
    return False
