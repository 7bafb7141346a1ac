"""One pod on this machine: its containers in kubelet's order, each in a bubblewrap sandbox."""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from worker.cluster.local import podimages, podstatus, process, sandbox, volumes
from worker.cluster.local.podstatus import ContainerState
from worker.cluster.local.process import Process, Processes

logger = logging.getLogger(__name__)

StatusSink = Callable[[dict[str, Any]], None]


class PodRunner:
    """Runs one pod's containers with kubelet's init, sidecar and main semantics."""

    def __init__(
        self,
        pod: dict[str, Any],
        pod_dir: Path,
        configmaps: Mapping[str, dict[str, Any]],
        on_status: StatusSink,
        *,
        task_id: str,
        bwrap: str = "bwrap",
        keep: tuple[str, ...] = (),
        grace_cap: float = 5.0,
        restart_backoff: float = 1.0,
        images: podimages.ImageSource | None = None,
    ) -> None:
        self._pod = copy.deepcopy(pod)
        self._dir = pod_dir
        self._configmaps = configmaps
        self._on_status = on_status
        self._task, self._bwrap, self._keep = task_id, bwrap, keep
        self._procs = Processes()
        self._images = podimages.PodImages(
            images, pod_dir, self._wait_any, self._stopped, self._report, self._procs.wake
        )
        spec = self._pod["spec"]
        self._init: list[dict[str, Any]] = list(spec.get("initContainers") or [])
        self._main: list[dict[str, Any]] = list(spec.get("containers") or [])
        self._sidecars = frozenset(
            c["name"] for c in self._init if c.get("restartPolicy") == "Always"
        )
        self._plain_init = frozenset(c["name"] for c in self._init) - self._sidecars
        self._grace = min(float(spec.get("terminationGracePeriodSeconds", 30)), grace_cap)
        self._backoff = restart_backoff
        first = "PodInitializing" if self._init else "ContainerCreating"
        self._states = {
            c["name"]: ContainerState(c["name"], str(c.get("image", "")), podstatus.waiting(first))
            for c in [*self._init, *self._main]
        }
        self._restart_due: dict[str, float] = {}
        self._stopping = False
        self._interrupt: tuple[str, str] | None = None
        self._phase, self._reason, self._message = "Pending", "", ""
        self._start_time = podstatus.now()
        self._sandbox_ready = self._initialized = False
        self._conditions = podstatus.Conditions()
        self._volumes: dict[str, str] = {}
        self._read_only: frozenset[str] = frozenset()
        self._fields = sandbox.pod_fields(self._pod)
        name = self._pod["metadata"]["name"]
        self._thread = threading.Thread(target=self._run, name=f"pod-{name}", daemon=True)

    # -- control from other threads -----------------------------------------------------------

    def start(self) -> None:
        """Start running the pod in its own thread."""
        self._thread.start()

    def kill(self) -> None:
        """Kill every process of the pod at once and wait until they are gone."""
        self._procs.kill()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def interrupt(self, reason: str, message: str) -> None:
        """Stop the pod gracefully and fail it with ``reason`` (a deadline passed)."""
        self._interrupt = (reason, message)
        self._procs.wake()

    # -- the pod's life -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception:  # a bug must not leave processes behind or the pod stuck in Running
            logger.exception("task %s: the local runtime failed running its pod", self._task)
            self._phase, self._reason = "Failed", "LocalRuntimeError"
            self._message = "the local runtime failed running this pod; see the server log"
        finally:
            self._procs.close()
            self._images.release()
            self._report()

    def _run_pod(self) -> None:
        self._report()
        try:
            self._volumes, self._read_only = volumes.prepare(
                self._pod["spec"], self._dir / "volumes", self._configmaps
            )
        except (sandbox.SandboxError, OSError) as exc:
            self._phase, self._reason, self._message = "Failed", "VolumeSetupFailed", str(exc)
            return
        self._sandbox_ready = True
        self._report()
        failed = False
        for container in self._init:
            if self._stopped():
                break
            if container["name"] in self._sidecars:
                failed = not self._start_sidecar(container)
            else:
                failed = self._run_to_end(container) != 0
            if failed:
                break
        if not failed and not self._stopped():
            self._initialized = True
            for container in self._main:
                self._launch(container)
            self._phase = "Running"
            self._report()
            while not self._stopped() and any(c["name"] in self._procs for c in self._main):
                self._wait_any(None)
        self._stop_all()
        codes = [self._states[c["name"]].exit_code() for c in self._main]
        if self._interrupt is not None:
            self._phase = "Failed"
            self._reason, self._message = self._interrupt
        else:
            self._phase = "Failed" if failed or any(c != 0 for c in codes) else "Succeeded"

    def _stopped(self) -> bool:
        return self._procs.killed or self._interrupt is not None

    def _run_to_end(self, container: dict[str, Any]) -> int:
        if not self._launch(container):
            return 128
        while container["name"] in self._procs and not self._stopped():
            self._wait_any(None)
        code = self._states[container["name"]].exit_code()
        return 137 if code is None else code

    def _start_sidecar(self, container: dict[str, Any]) -> bool:
        """Start a native sidecar; True once its startup probe passed (kubelet's gate)."""
        name = container["name"]
        if not self._launch(container):
            return False
        probe = container.get("startupProbe")
        if not probe:
            self._mark_started(name)
            return True
        command = (probe.get("exec") or {}).get("command")
        if not command:
            self._fail_sidecar(name, "only exec startup probes are supported by the local runtime")
            return False
        period = float(probe.get("periodSeconds", 10))
        threshold = int(probe.get("failureThreshold", 3))
        timeout = float(probe.get("timeoutSeconds", 1))
        due = time.monotonic() + float(probe.get("initialDelaySeconds", 0))
        failures = 0
        while not self._stopped():
            if time.monotonic() < due:
                self._wait_any(due - time.monotonic())
                continue
            # A sidecar waiting for its restart cannot pass; counting that as a failure keeps
            # a crash-looping sidecar from holding the pod forever.
            if name in self._procs and self._run_probe(container, command, timeout):
                self._mark_started(name)
                return True
            failures += 1
            if failures >= threshold:
                self._fail_sidecar(name, f"startup probe failed {failures} times: {command}")
                return False
            due = time.monotonic() + period
        return False

    def _mark_started(self, name: str) -> None:
        state = self._states[name]
        state.started = state.ready = name in self._procs
        self._report()

    def _fail_sidecar(self, name: str, why: str) -> None:
        self._stopping = True
        self._procs.kill_one(name)
        while name in self._procs:
            self._wait_any(None)
        self._reason, self._message = "StartupProbeFailed", f"container {name}: {why}"
        logger.info("task %s: %s", self._task, self._message)

    def _run_probe(self, container: dict[str, Any], command: list[str], timeout: float) -> bool:
        # kubelet execs the probe inside the container; a sibling sandbox with the same mounts,
        # environment and working directory sees the same files.
        argv = self._argv({**container, "command": command, "args": []}, None, None)
        passed, output = process.run_probe(argv, timeout, self._procs.track_probe)
        if not passed:
            logger.debug("task %s: probe of %s: %r", self._task, container["name"], output[-200:])
        return passed

    def _argv(
        self, container: Mapping[str, Any], termination: Path | None, info_fd: int | None
    ) -> list[str]:
        return sandbox.bwrap_argv(
            container,
            self._volumes,
            fields=self._fields,
            termination_log=None if termination is None else str(termination),
            bwrap=self._bwrap,
            info_fd=info_fd,
            privileged=os.geteuid() == 0,
            read_only_volumes=self._read_only,
            keep=self._keep,
            image=self._images.sandbox(container, self._fields),
        )

    # -- processes ----------------------------------------------------------------------------

    def _launch(self, container: dict[str, Any]) -> bool:
        """Start one container; record StartError (exit 128) when it cannot start."""
        name = container["name"]
        state = self._states[name]
        if not self._images.ready(container, state):
            return False  # the pod stops while the image is not there yet
        started_at = podstatus.now()
        termination = self._dir / "termination" / name
        log = self._dir / "logs" / f"{name}.log"
        read_end, write_end = os.pipe()
        try:
            termination.parent.mkdir(parents=True, exist_ok=True)
            log.parent.mkdir(parents=True, exist_ok=True)
            termination.write_bytes(b"")
            if state.restart_count and log.exists():
                # kubelet starts a new log per restart; the old one is `kubectl logs --previous`.
                log.replace(log.with_suffix(".previous.log"))
            self._images.start(container, self._volumes, self._fields, self._read_only)
            argv = self._argv(container, termination, write_end)
            running = self._procs.start(container, argv, log, started_at, termination, write_end)
            if running is None:
                return False  # killed
            os.close(write_end)
            write_end = -1
            running.child = process.read_child_pid(read_end)
        except (sandbox.SandboxError, OSError) as exc:
            state.state = podstatus.terminated(128, started_at, str(exc), "StartError")
            self._report()
            return False
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        state.state = podstatus.running(started_at)
        state.container_id = f"bwrap://{running.proc.pid}"
        # A sidecar is started once its probe passes (approximation: not re-probed after a
        # restart); with no readiness probes, a main container is ready once running.
        state.started = name not in self._sidecars or state.restart_count > 0
        state.ready = state.started and name not in self._plain_init
        logger.debug("task %s: started %s (pid %s)", self._task, name, running.proc.pid)
        self._report()
        return True

    def _wait_any(self, timeout: float | None) -> None:
        """Wait for a process to exit, a wake-up, a due restart or ``timeout`` seconds."""
        if self._restart_due:
            until = max(0.0, min(self._restart_due.values()) - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        for name, running in self._procs.wait(timeout):
            self._exited(name, running)
        for name, due in list(self._restart_due.items()):
            if due <= time.monotonic() and not self._stopping and not self._stopped():
                del self._restart_due[name]
                self._states[name].restart_count += 1
                self._launch(next(c for c in self._init if c["name"] == name))

    def _exited(self, name: str, running: Process) -> None:
        code, reason, message = process.outcome(running)
        state = self._states[name]
        state.state = podstatus.terminated(code, running.started_at, message, reason)
        state.started = False
        state.ready = code == 0 and name in self._plain_init  # kubelet: a done init is ready
        if name in self._sidecars and not self._stopping and not self._stopped():
            # A native sidecar is restarted whatever the pod's restartPolicy, with a back-off.
            delay = min(self._backoff * 2**state.restart_count, 30 * self._backoff)
            state.last_state = state.state
            pod = self._pod["metadata"]["name"]
            state.state = podstatus.waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={name} pod={pod}",
            )
            self._restart_due[name] = time.monotonic() + delay
        logger.debug("task %s: %s exited with %s", self._task, name, code)
        self._report()

    def _stop_all(self) -> None:
        """Stop what runs: main containers, then sidecars in reverse order (SIGTERM, grace)."""
        self._stopping = True
        self._restart_due.clear()
        deadline = time.monotonic() + self._grace
        mains = [c["name"] for c in self._main if c["name"] in self._procs]
        sidecars = [c["name"] for c in reversed(self._init) if c["name"] in self._procs]
        for group in [mains, *[[name] for name in sidecars]]:
            for name in group:
                self._procs.signal(name, signal.SIGTERM)
            while any(n in self._procs for n in group) and not self._procs.killed:
                left = deadline - time.monotonic()
                if left <= 0:
                    for name in group:
                        self._procs.kill_one(name)
                self._wait_any(max(left, 0.05))

    # -- status -------------------------------------------------------------------------------

    def _report(self) -> None:
        if self._procs.killed:
            return  # the pod is being deleted; nobody wants its last words
        init = [self._states[c["name"]] for c in self._init]
        main = [self._states[c["name"]] for c in self._main]
        conditions = podstatus.pod_conditions(
            self._conditions,
            self._phase,
            self._sandbox_ready,
            init,
            self._sidecars,
            main,
            self._initialized,
        )
        status = podstatus.pod_status(
            self._phase, conditions, self._start_time, init, main, self._reason, self._message
        )
        self._on_status(copy.deepcopy(status))
