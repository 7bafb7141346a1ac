"""The executor runner shim (worker/sequencer/runner.sh) under dash and busybox ash."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "worker" / "sequencer" / "runner.sh"
BUSYBOX = "/bin/busybox"
TAIL = 65536
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z\n$")
# the executables the commands below use: this interpreter as "python3", then the system's
PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"
ARGV_JSON = "import sys, json; print(json.dumps(sys.argv[1:]))"
SHELLS = ["sh", f"{BUSYBOX} sh"]


def _missing(what: str) -> None:
    message = f"{what} is not installed (apt-get install busybox-static)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest) -> list[str]:
    """The shell the runner runs under, as an argv prefix with an absolute program path."""
    argv = str(request.param).split()
    found = shutil.which(argv[0])
    if found is None:
        _missing(argv[0])
    return [str(found), *argv[1:]]


@pytest.fixture(params=[False, True], ids=["path-tools", "control-busybox"])
def control(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A control directory, with or without bin/busybox for the runner's helpers."""
    ctl = tmp_path / "tes"
    ctl.mkdir()
    if request.param:
        if not os.access(BUSYBOX, os.X_OK):
            _missing(BUSYBOX)
        (ctl / "bin").mkdir()
        (ctl / "bin" / "busybox").symlink_to(BUSYBOX)
    return ctl


@dataclass
class Run:
    """One runner invocation: its own result and the files it left."""

    returncode: int
    stdout: bytes
    stderr: bytes
    exec_dir: Path

    def read(self, name: str) -> str:
        """Text of a file in exec/<i>/."""
        return (self.exec_dir / name).read_text()


def runner_argv(
    shell: Sequence[str],
    control: Path,
    argv: Sequence[str],
    *,
    index: int = 0,
    stdin: str = "",
    stdout: str = "",
    stderr: str = "",
    ignore_error: bool = False,
) -> list[str]:
    """The calling convention the job spec builder emits."""
    flag = "1" if ignore_error else "0"
    return [*shell, str(RUNNER), str(control), str(index), stdin, stdout, stderr, flag, "--", *argv]


def run(
    shell: Sequence[str],
    control: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    index: int = 0,
    stdin: str = "",
    stdout: str = "",
    stderr: str = "",
    ignore_error: bool = False,
) -> Run:
    """Run the runner to completion and check the invariants every run keeps."""
    full = runner_argv(
        shell,
        control,
        argv,
        index=index,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        ignore_error=ignore_error,
    )
    proc = subprocess.run(
        full,
        env={"PATH": PATH} if env is None else dict(env),
        cwd=cwd or control,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return Run(proc.returncode, proc.stdout, proc.stderr, control / "exec" / str(index))


def assert_recorded(result: Run, exit_code: int) -> None:
    """exit_code, start and end are present and well formed; no FIFOs are left behind."""
    assert result.read("exit_code") == f"{exit_code}\n"
    start, end = result.read("start"), result.read("end")
    assert RFC3339.match(start), start
    assert RFC3339.match(end), end
    assert start <= end
    assert not (result.exec_dir / "skipped").exists()
    leftovers = [p.name for p in result.exec_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


HOSTILE = [
    "two words",
    "single ' quote",
    'double " quote',
    "$HOME",
    "${HOME}",
    "$(id)",
    "`id`",
    "back\\slash",
    "new\nline",
    "tab\there",
    "trailing newline\n",
    "*",
    "?",
    "[a]",
    "*.txt",
    "-n",
    "-e",
    "--",
    "",
    " ",
    "ünïcødé ✓ 漢字",
    "x" * 10_000,
    "a=b",
    ";|&<>(){}!#~",
    "",
]


def test_argv_passed_exactly(shell: list[str], control: Path, tmp_path: Path) -> None:
    """Hostile arguments reach the program byte for byte: no splitting, globbing or expansion."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("a", "b", "c.txt", "x"):  # so that *, ?, [a] and *.txt would match
        (cwd / name).write_text("")
    result = run(shell, control, ["python3", "-S", "-c", ARGV_JSON, *HOSTILE], cwd=cwd)
    assert json.loads(result.stdout) == HOSTILE
    assert json.loads(result.read("stdout.tail")) == HOSTILE
    assert result.read("stderr.tail") == ""
    assert_recorded(result, 0)


def test_program_found_on_the_containers_path(
    shell: list[str], control: Path, tmp_path: Path
) -> None:
    """argv[0] is the image's program, not a shell builtin nor a busybox applet of that name."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("echo", "ls", "printf"):
        fake = bindir / name
        fake.write_text(f'#!/bin/sh\necho "image {name}:$*"\n')
        fake.chmod(0o755)
    env = {"PATH": f"{bindir}:{PATH}"}
    for name in ("echo", "ls", "printf"):
        result = run(shell, control, [name, "-n", "x"], env=env)
        assert result.stdout == f"image {name}:-n x\n".encode()


def _env_of(stdout: bytes) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in stdout.decode().split("\0") if entry)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="empty"),
        pytest.param(
            {
                "PATH": PATH,
                "HOME": "/home/x",
                "SPACES": "a b  c",
                "QUOTES": 'it\'s "q"',
                "MULTI": "line1\nline2\n",
                "EMPTY": "",
                "GLOB": "*",
                "PWD": "/not/the/cwd",
                "SHLVL": "7",
                "OPTIND": "9",
                "PPID": "4242",
                "IFS": "x",
                "a.b": "dotted name",
                "x-y": "dashed name",
                "1abc": "digit first",
                "-dash": "leading dash",
            },
            id="odd",
        ),
    ],
)
def test_environment_passed_exactly(shell: list[str], control: Path, env: dict[str, str]) -> None:
    """The command sees exactly the container's environment, nothing of the runner's or shell's."""
    direct = subprocess.run(["/usr/bin/env", "-0"], env=env, capture_output=True, check=True)
    result = run(shell, control, ["env", "-0"], env=env)
    assert _env_of(result.stdout) == _env_of(direct.stdout) == env
    assert_recorded(result, 0)


def test_non_utf8_bytes(shell: list[str], control: Path) -> None:
    """Arguments and environment values that are not UTF-8 pass through unchanged."""
    env = {b"PATH": PATH.encode(), b"RAW": b"\xff\xfe'\"\\$x\x01\x7f", b"U": "\u00fc\n'".encode()}
    args = [b"\xff\xfe", b"a'b\x01", "\u00fc".encode()]
    full = [arg.encode() for arg in runner_argv(shell, control, ["printf", "%s|"])]
    proc = subprocess.run([*full, *args], env=env, capture_output=True, check=True, timeout=10)
    assert proc.stdout == b"|".join(args) + b"|"
    proc = subprocess.run(
        [arg.encode() for arg in runner_argv(shell, control, ["env", "-0"], index=1)],
        env=env,
        capture_output=True,
        check=True,
        timeout=10,
    )
    assert dict(e.split(b"=", 1) for e in proc.stdout.split(b"\0") if e) == env


def test_stdin_from_file_else_dev_null(shell: list[str], control: Path, tmp_path: Path) -> None:
    """stdin comes from the named file; without one the command reads /dev/null (no hang)."""
    data = tmp_path / "in.txt"
    data.write_bytes(b"line 1\nline 2 \xff\n")
    result = run(shell, control, ["cat"], stdin=str(data))
    assert result.stdout == b"line 1\nline 2 \xff\n"
    result = run(shell, control, ["cat"], index=1)
    assert result.stdout == b""
    assert_recorded(result, 0)


def test_missing_stdin_file_fails_the_executor(shell: list[str], control: Path) -> None:
    """An unreadable stdin file is exit code 1 with a readable reason, the command not run."""
    marker = control / "ran"
    result = run(shell, control, ["touch", str(marker)], stdin=str(control / "nope"))
    assert not marker.exists()
    assert "cannot read stdin file" in result.read("stderr.tail")
    assert_recorded(result, 1)
    assert (control / "abort").exists()


WRITE_BOTH = (
    "import sys; sys.stdout.write('to out\\n'); sys.stdout.flush(); sys.stderr.write('to err\\n')"
)


def test_stdout_stderr_files_and_streams(shell: list[str], control: Path, tmp_path: Path) -> None:
    """Named stdout/stderr files get the output, and so do the container streams and tails."""
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    out.write_text("old content that must go\n")
    result = run(
        shell, control, ["python3", "-S", "-c", WRITE_BOTH], stdout=str(out), stderr=str(err)
    )
    assert out.read_text() == "to out\n"
    assert err.read_text() == "to err\n"
    assert result.stdout == b"to out\n"
    assert result.stderr == b"to err\n"
    assert result.read("stdout.tail") == "to out\n"
    assert result.read("stderr.tail") == "to err\n"
    assert_recorded(result, 0)


def test_stdout_and_stderr_to_the_same_file(
    shell: list[str], control: Path, tmp_path: Path
) -> None:
    """When stdout and stderr name one file, it holds both streams (neither clobbers the other)."""
    both = tmp_path / "both.txt"
    result = run(
        shell, control, ["python3", "-S", "-c", WRITE_BOTH], stdout=str(both), stderr=str(both)
    )
    assert sorted(both.read_text().splitlines()) == ["to err", "to out"]
    assert_recorded(result, 0)


BIG = "import sys; sys.stdout.write(''.join(f'{i:08d}\\n' for i in range(120_000)))"


def test_tails_hold_the_last_64_kib(shell: list[str], control: Path) -> None:
    """With ~1 MB of output each tail file keeps exactly the last 65536 bytes."""
    code = f"{BIG}; sys.stdout.flush(); sys.stdout = sys.stderr; {BIG.split('; ', 1)[1]}"
    result = run(shell, control, ["python3", "-S", "-c", code])
    expected = "".join(f"{i:08d}\n" for i in range(120_000)).encode()
    assert result.stdout == expected
    assert result.stderr == expected
    assert (result.exec_dir / "stdout.tail").read_bytes() == expected[-TAIL:]
    assert (result.exec_dir / "stderr.tail").read_bytes() == expected[-TAIL:]
    assert_recorded(result, 0)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        pytest.param(["true"], 0, "", id="0"),
        pytest.param(["sh", "-c", "exit 3"], 3, "", id="3"),
        pytest.param(["no-such-command-kt"], 127, "not found", id="127-name"),
        pytest.param(["{tmp}/nope"], 127, "not found", id="127-path"),
        pytest.param(["{tmp}/plain.sh"], 126, "Permission denied", id="126-file"),
        pytest.param(["{tmp}"], 126, "Is a directory", id="126-dir"),
    ],
)
def test_exit_codes_and_abort(
    shell: list[str], control: Path, argv: list[str], code: int, message: str
) -> None:
    """The command's own exit code is recorded; non-zero creates abort; the runner exits 0."""
    tmp = control.parent
    plain = tmp / "plain.sh"
    plain.write_text("#!/bin/sh\necho should not run\n")
    plain.chmod(0o644)
    result = run(shell, control, [arg.format(tmp=tmp) for arg in argv])
    assert_recorded(result, code)
    assert (control / "abort").exists() == (code != 0)
    assert message in result.read("stderr.tail")
    assert message.encode() in result.stderr


def test_ignore_error_does_not_abort(shell: list[str], control: Path) -> None:
    """A failing executor with ignore_error keeps its exit code but does not stop later ones."""
    result = run(shell, control, ["sh", "-c", "exit 5"], ignore_error=True)
    assert_recorded(result, 5)
    assert not (control / "abort").exists()


def test_skip_when_aborted(shell: list[str], control: Path) -> None:
    """With /tes/abort present the command is not run and only 'skipped' is written."""
    (control / "abort").write_text("")
    marker = control / "ran"
    result = run(shell, control, ["touch", str(marker)], index=2)
    assert not marker.exists()
    assert result.exec_dir.is_dir()
    assert sorted(p.name for p in result.exec_dir.iterdir()) == ["skipped"]
    assert result.stdout == result.stderr == b""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["0", "", "", "", "0", "true"], id="no-separator"),
        pytest.param(["0", "", "", "", "0", "--"], id="no-argv"),
        pytest.param(["../x", "", "", "", "0", "--", "true"], id="bad-index"),
    ],
)
def test_bad_arguments(shell: list[str], control: Path, args: list[str]) -> None:
    """Bad calls print one line, create abort and still exit 0."""
    proc = subprocess.run(
        [*shell, str(RUNNER), str(control), *args],
        capture_output=True,
        env={"PATH": PATH},
        check=False,
        timeout=10,
    )
    assert proc.returncode == 0
    assert proc.stderr.startswith(b"runner: ")
    assert proc.stderr.count(b"\n") == 1
    assert (control / "abort").exists()


def test_unwritable_control_dir(shell: list[str], tmp_path: Path) -> None:
    """A control dir that cannot be written is reported on stderr; nothing runs; exit 0."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    marker = tmp_path / "ran"
    proc = subprocess.run(
        runner_argv(shell, not_a_dir, ["touch", str(marker)]),
        capture_output=True,
        env={"PATH": PATH},
        check=False,
        timeout=10,
    )
    assert proc.returncode == 0
    assert b"not writable" in proc.stderr
    assert not marker.exists()


def _child_started(pid: int, name: bytes) -> bool:
    """Whether process pid has a child running the program called name."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return False
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_bytes() == name + b"\n":
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_forwarded(shell: list[str], control: Path, sig: signal.Signals) -> None:
    """Cancelling the runner stops the command, records 143 (SIGTERM) and aborts; exit 0."""
    proc = subprocess.Popen(
        runner_argv(shell, control, ["sleep", "30"]),
        env={"PATH": PATH},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not _child_started(proc.pid, b"sleep") and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2
    finally:
        proc.kill()
        proc.wait()
    d = control / "exec" / "0"
    assert (d / "exit_code").read_text() == "143\n"
    assert RFC3339.match((d / "end").read_text())
    assert (control / "abort").exists()


def test_leftover_background_process_does_not_hang(tmp_path: Path) -> None:
    """A daemon the command leaves holding stdout delays the runner by the grace period only."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    pids: list[Path] = []
    for n, shell in enumerate(SHELLS):
        argv = shell.split()
        if shutil.which(argv[0]) is None:
            continue
        control = tmp_path / f"tes{n}"
        control.mkdir()
        pidfile = tmp_path / f"pid{n}"
        pids.append(pidfile)
        script = f"sleep 30 & echo $! > {pidfile}; echo started"
        proc = subprocess.Popen(
            runner_argv(argv, control, ["sh", "-c", script]),
            env={"PATH": PATH},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append((proc, control))
    try:
        for proc, control in procs:
            out, _ = proc.communicate(timeout=10)
            assert proc.returncode == 0
            assert out == b"started\n"
            d = control / "exec" / "0"
            assert (d / "exit_code").read_text() == "0\n"
            assert (d / "stdout.tail").read_text() == "started\n"
    finally:
        for pidfile in pids:
            if pidfile.exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pidfile.read_text()), signal.SIGKILL)


# Termination message: /dev/termination-log only exists in pods, so this test gives the runner
# a private /dev (a mount namespace) holding null and a writable termination-log.
PRIVATE_DEV = """set -e
dev=$1; shift
touch "$dev/null" "$dev/termination-log"
mount --bind /dev/null "$dev/null"
mount --bind "$dev" /dev
exec "$@"
"""


@pytest.mark.parametrize("aborted", [False, True], ids=["ran", "skipped"])
def test_termination_message(
    shell: list[str], control: Path, tmp_path: Path, aborted: bool
) -> None:
    """The runner writes its JSON result to /dev/termination-log when that file is writable."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    dev = tmp_path / "dev"
    dev.mkdir()
    if aborted:
        (control / "abort").write_text("")
    userns = [] if os.geteuid() == 0 else ["-r"]
    argv = runner_argv(shell, control, ["sh", "-c", "exit 4"])
    proc = subprocess.run(
        [unshare, *userns, "-m", "/bin/sh", "-c", PRIVATE_DEV, "sh", str(dev), *argv],
        capture_output=True,
        env={"PATH": PATH},
        check=False,
        timeout=20,
    )
    if proc.returncode != 0 or not (dev / "termination-log").exists():
        pytest.skip(f"cannot build a private /dev here: {proc.stderr.decode(errors='replace')}")
    message = json.loads((dev / "termination-log").read_text())
    if aborted:
        assert message == {"skipped": True}
        return
    d = control / "exec" / "0"
    assert message == {
        "exit_code": 4,
        "start": (d / "start").read_text().strip(),
        "end": (d / "end").read_text().strip(),
    }


def test_runner_parses(shell: list[str]) -> None:
    """The shim is valid for the shell (sh -n) and has no CR line ends."""
    assert b"\r" not in RUNNER.read_bytes()
    subprocess.run([*shell, "-n", str(RUNNER)], check=True, timeout=10)


# -- in the task pod: the life FIFO, turns and the verdict (docs/runner.md) ----------------------


def _poke(fifo: Path) -> None:
    """Wake whoever reads a wake FIFO, as the sequencer does (nobody reading is fine)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.write(fd, b"\n")
    os.close(fd)


def test_gated_runner_waits_for_its_turn_and_the_verdict(
    shell: list[str], control: Path, tmp_path: Path
) -> None:
    """ready layout: no run before exec/<i>/turn; tells start and end; stays until the verdict."""
    from worker.sequencer import setup

    setup.prepare(control, executors=2, gates=True)
    life = os.open(control / "exec" / "0" / "life", os.O_RDONLY | os.O_NONBLOCK)
    ran = tmp_path / "ran"
    argv = runner_argv(shell, control, ["sh", "-c", f"echo ran > {ran}"])
    proc = subprocess.Popen(argv, env={"PATH": PATH}, cwd=control, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        assert proc.poll() is None and not ran.exists(), "it must wait for its turn"
        (control / "exec" / "0" / "turn").touch()
        _poke(control / "exec" / "0" / "wake")
        deadline = time.monotonic() + 10
        while not (control / "exec" / "0" / "exit_code").exists():
            assert time.monotonic() < deadline, "the wake-up was not heard"
            time.sleep(0.01)
        assert ran.read_text() == "ran\n"
        while not (control / "exec" / "1" / "turn").exists():  # written after the exit code
            assert time.monotonic() < deadline, "the next executor's turn"
            time.sleep(0.01)
        time.sleep(0.3)
        assert proc.poll() is None, "it must stay until the verdict"
        (control / "verdict").write_text("COMPLETE")
        _poke(control / "exec" / "0" / "wake")
        assert proc.wait(timeout=10) == 0
        said = b""
        while chunk := os.read(life, 4096):
            said += chunk
        assert said == b"start\nend\n"  # then end of file: the runner has gone
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(life)


def test_gated_runner_stopped_before_its_turn_is_skipped(shell: list[str], control: Path) -> None:
    """A signal while waiting for the turn: skipped at once, the next turn not given."""
    from worker.sequencer import setup

    setup.prepare(control, executors=2, gates=True)
    life = os.open(control / "exec" / "0" / "life", os.O_RDONLY | os.O_NONBLOCK)
    argv = runner_argv(shell, control, ["true"])
    proc = subprocess.Popen(argv, env={"PATH": PATH}, cwd=control)
    try:
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert (control / "exec" / "0" / "skipped").exists()
        assert not (control / "exec" / "0" / "exit_code").exists()
        assert not (control / "exec" / "1" / "turn").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(life)
