"""Images in the local runtime: references, layers, the cache against a real registry on
loopback (Debian's docker-registry, tests/registry.py), and containers run on image roots."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import registry as testreg
from tests.integration.test_local_cluster import (
    GiB,
    Recorder,
    _pod,
    _statuses,
    job_done,
    make_job,
)
from tests.registry import Registry
from worker.cluster.base import PermanentError
from worker.cluster.local import LocalCluster, layers, reference, rootfs, streams
from worker.cluster.local.images import ImageError, ImageStore
from worker.cluster.local.podimages import ImageSource
from worker.cluster.local.reference import InvalidReference, Platform
from worker.cluster.local.registry import PullError, choose, load_credentials
from worker.cluster.local.registry import Registry as Client

# The registries, shared by this module's tests (fixtures of tests/registry.py).
open_registry = testreg.open_registry
private_registry = testreg.private_registry

# -- references and policies (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "endpoint"),
    [
        ("alpine", "docker.io/library/alpine:latest", "registry-1.docker.io"),
        ("alpine:3.20", "docker.io/library/alpine:3.20", "registry-1.docker.io"),
        ("rocker/r-ver", "docker.io/rocker/r-ver:latest", "registry-1.docker.io"),
        (
            "index.docker.io/library/busybox:1",
            "docker.io/library/busybox:1",
            "registry-1.docker.io",
        ),
        (
            "quay.io/biocontainers/samtools:1.21--h50ea8bc_0",
            "quay.io/biocontainers/samtools:1.21--h50ea8bc_0",
            "quay.io",
        ),
        ("localhost/app", "localhost/app:latest", "localhost"),
        ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t", "127.0.0.1:5000"),
        (
            "python@sha256:" + "a" * 64,
            "docker.io/library/python@sha256:" + "a" * 64,
            "registry-1.docker.io",
        ),
        ("ghcr.io/o/i:v1@sha256:" + "b" * 64, "ghcr.io/o/i:v1@sha256:" + "b" * 64, "ghcr.io"),
    ],
)
def test_references_normalize_as_kubelet_resolves_them(
    text: str, canonical: str, endpoint: str
) -> None:
    ref = reference.parse(text)
    assert (ref.canonical, ref.endpoint) == (canonical, endpoint)


@pytest.mark.parametrize(
    "text", ["", "Alpine", "a b", "alpine:", "alpine@sha256:xyz", "x/../y", ":t"]
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference, match="invalid reference format"):
        reference.parse(text)


def test_pull_policy_defaults_as_the_api_server_sets_them() -> None:
    assert reference.pull_policy("alpine", None) == "Always"
    assert reference.pull_policy("alpine:latest", None) == "Always"
    assert reference.pull_policy("alpine:3.20", None) == "IfNotPresent"
    assert reference.pull_policy("alpine@sha256:" + "a" * 64, None) == "IfNotPresent"
    assert reference.pull_policy("alpine", "Never") == "Never"


def test_platform_choice_skips_attestations_and_names_what_exists() -> None:
    here = Platform("linux", "arm64", "v8")
    ref = reference.parse("x:1")
    entries = [
        {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        {
            "digest": "sha256:arm",
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        },
    ]
    assert choose(entries, here, ref, "sha256:idx") == "sha256:arm"
    assert choose(entries[2:], Platform("linux", "arm64"), ref, "i") == "sha256:arm"
    with pytest.raises(
        PullError, match=r"no match for platform linux/s390x .* linux/amd64, linux/arm64/v8"
    ):
        choose(entries, Platform("linux", "s390x"), ref, "sha256:idx")


def test_credentials_come_from_a_docker_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    auth = base64.b64encode(b"bob:pa:ss").decode()
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "ghcr.io": {"username": "u", "password": "p"},
        "https://quay.io/v2/": {"auth": auth},
    }}))  # fmt: skip
    assert load_credentials(path) == {
        "docker.io": ("bob", "pa:ss"),
        "ghcr.io": ("u", "p"),
        "quay.io": ("bob", "pa:ss"),
    }
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the registry auth file"):
        load_credentials(path)


# -- layers onto a root ---------------------------------------------------------------------------


def _tar(*members: tuple[str, str, Any]) -> io.BytesIO:
    """A tar of (name, kind, value): file bytes, dir None, symlink/hardlink target."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                info.size, data = len(value), io.BytesIO(value)
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, value
            tar.addfile(info, data)
    out.seek(0)
    return out


def test_layers_apply_whiteouts_opaque_dirs_and_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    tree = rootfs.Tree(str(root))
    tree.apply(_tar(
        ("etc", "dir", None), ("etc/keep", "file", b"keep"), ("etc/gone", "file", b"gone"),
        ("opt", "dir", None), ("opt/old", "dir", None), ("opt/old/a", "file", b"a"),
        ("usr", "dir", None), ("usr/bin", "dir", None), ("bin", "symlink", "usr/bin"),
        ("usr/bin/tool", "file", b"#!tool"), ("usr/bin/alias", "hardlink", "usr/bin/tool"),
    ))  # fmt: skip
    tree.apply(_tar(
        ("etc/.wh.gone", "file", b""), ("opt/old/new", "file", b"new"),
        ("opt/old/.wh..wh..opq", "file", b""),
        ("bin/added", "file", b"through the symlink"),
    ))  # fmt: skip
    tree.finish()
    assert (root / "etc/keep").read_bytes() == b"keep"
    assert not (root / "etc/gone").exists()
    assert sorted(os.listdir(root / "opt/old")) == ["new"]  # the lower a is hidden, new kept
    assert os.readlink(root / "bin") == "usr/bin"
    assert (root / "usr/bin/added").read_bytes() == b"through the symlink"
    assert os.stat(root / "usr/bin/alias").st_ino == os.stat(root / "usr/bin/tool").st_ino


def test_layers_never_write_outside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    tree = rootfs.Tree(str(root))
    # A symlink to an absolute host path is followed inside the root, as the container sees it.
    tree.apply(_tar(("evil", "symlink", str(outside)), ("up", "symlink", "../../..")))
    tree.apply(_tar(("evil/planted", "file", b"x"), ("up/escaped", "file", b"x")))
    assert not (outside / "planted").exists() and not (tmp_path / "escaped").exists()
    assert (root / str(outside).lstrip("/") / "planted").exists()
    assert (root / "escaped").exists()
    with pytest.raises(rootfs.LayerError, match="leaves the root"):
        tree.apply(_tar(("../../etc/x", "file", b"x")))
    with pytest.raises(rootfs.LayerError, match="missing"):
        tree.apply(_tar(("link", "hardlink", "no/such/file")))


def test_gzip_streams_with_several_members_padding_and_a_cut() -> None:
    two = gzip.compress(b"first ") + gzip.compress(b"second" * 100_000) + b"\0" * 1024
    gunzip = streams.decompressed(io.BytesIO(two))
    assert b"".join(iter(lambda: gunzip.read(4096), b"")) == b"first " + b"second" * 100_000
    assert streams.decompressed(io.BytesIO(b"plain tar")).read() == b"plain tar"
    cut = streams.decompressed(io.BytesIO(gzip.compress(b"x" * 100_000)[:-12]))
    with pytest.raises(EOFError, match="ended before"):
        while cut.read(4096):
            pass
    with pytest.raises(streams.UnsupportedCompression, match="zstd"):
        streams.decompressed(io.BytesIO(b"\x28\xb5\x2f\xfd rest"))


# -- the cache against a real registry ------------------------------------------------------------


def _store(tmp_path: Path, registry: Registry, name: str = "images", **kwargs: Any) -> ImageStore:
    client = Client(insecure=frozenset({registry.host}), **kwargs.pop("client", {}))
    return ImageStore(tmp_path / name, client, kwargs.pop("max_bytes", 10 * GiB))


def test_one_process_per_image_cache(tmp_path: Path) -> None:
    """A second server on the same data directory is refused, saying why."""
    first = ImageStore(tmp_path / "images", Client(), GiB)
    with pytest.raises(PermanentError, match="another kueue-tes process uses the image cache in"):
        ImageStore(tmp_path / "images", Client(), GiB)
    assert first.downloads == 0


def test_pull_resolves_the_platform_and_applies_whiteouts(
    tmp_path: Path, open_registry: Registry
) -> None:
    store = _store(tmp_path, open_registry)
    names = open_registry.names
    multi = store.pull(names["multi"], "IfNotPresent")
    assert Path(multi.root, "etc/marker").read_text() == "mine\n"
    assert multi.image_id.startswith(f"{open_registry.host}/tests/multi@sha256:")
    whiteout = store.pull(names["whiteout"], "IfNotPresent")
    assert not Path(whiteout.root, "etc/doomed").exists()
    assert sorted(os.listdir(Path(whiteout.root, "opt/old"))) == ["c"]
    assert os.readlink(Path(whiteout.root, "bin/sh")) == "busybox"
    configured = store.pull(names["config"], "IfNotPresent")
    assert configured.entrypoint == ("/bin/echo", "entry") and configured.cmd == ("from-cmd",)
    assert configured.working_dir == "/srv/app" and "FROM_IMAGE=image" in configured.env
    with pytest.raises(
        ImageError, match=r"no match for platform .*\(the image is built for linux/s390x|amd64\)"
    ) as lacking:
        store.pull(names["lacking"], "IfNotPresent")
    assert lacking.value.reason == "ErrImagePull"
    for image in (multi, whiteout, configured):
        store.release(image)


def test_missing_images_unreachable_registries_and_bad_names(
    tmp_path: Path, open_registry: Registry
) -> None:
    store = _store(tmp_path, open_registry)
    with pytest.raises(ImageError, match=r'nosuch:1": not found \(MANIFEST_UNKNOWN') as missing:
        store.pull(f"{open_registry.host}/tests/nosuch:1", "IfNotPresent")
    assert missing.value.reason == "ErrImagePull"
    with pytest.raises(ImageError, match="manifest unknown"):
        store.pull(f"{open_registry.host}/tests/marker:gone", "IfNotPresent")
    with pytest.raises(ImageError, match=r"cannot reach registry 127\.0\.0\.1:1") as unreachable:
        store.pull("127.0.0.1:1/x/y:1", "IfNotPresent")
    assert unreachable.value.reason == "ErrImagePull"
    with pytest.raises(ImageError) as bad:
        store.pull("Not A Name", "IfNotPresent")
    assert bad.value.reason == "InvalidImageName"
    with pytest.raises(ImageError) as never:
        store.pull(open_registry.names["marker"], "Never")
    assert never.value.reason == "ErrImageNeverPull"


def test_token_auth_anonymous_credentials_and_refusals(
    tmp_path: Path, private_registry: Registry
) -> None:
    host = private_registry.host
    anonymous = _store(tmp_path, private_registry, "anon")
    image = anonymous.pull(f"{host}/public/box:1", "IfNotPresent")  # an anonymous bearer token
    assert Path(image.root, "etc/marker").read_text() == "private marker\n"
    with pytest.raises(ImageError, match=r"pull access denied anonymously .*UNAUTHORIZED"):
        anonymous.pull(f"{host}/private/box:1", "IfNotPresent")
    auth = tmp_path / "config.json"
    auth.write_text(
        json.dumps({"auths": {host: {"auth": base64.b64encode(b"alice:secret").decode()}}})
    )
    alice = _store(
        tmp_path, private_registry, "alice", client={"credentials": load_credentials(auth)}
    )
    assert Path(alice.pull(f"{host}/private/box:1", "IfNotPresent").root, "etc/marker").exists()
    wrong = {"credentials": {host: ("alice", "wrong")}}
    refused = _store(tmp_path, private_registry, "wrong", client=wrong)
    with pytest.raises(
        ImageError,
        match=r"token service refused the configured credentials .*incorrect username or password",
    ):
        refused.pull(f"{host}/private/box:1", "IfNotPresent")


def test_twenty_concurrent_pulls_fetch_each_layer_once(
    tmp_path: Path, open_registry: Registry
) -> None:
    arch, _ = testreg.host_architecture()
    fresh = testreg.layer(testreg.busybox_root(marker="twenty\n"))
    open_registry.push_image("tests/twenty", "1", [fresh], testreg.config([fresh], arch))
    before = open_registry.blob_fetches("tests/twenty")
    store = _store(tmp_path, open_registry)
    barrier = threading.Barrier(20)
    roots: list[str] = []

    def pull() -> None:
        barrier.wait()
        roots.append(store.pull(f"{open_registry.host}/tests/twenty:1", "IfNotPresent").root)

    threads = [threading.Thread(target=pull) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(roots) == 20 and len(set(roots)) == 1
    # One layer and one config, each fetched once, by twenty pulls at the same time.
    assert open_registry.blob_fetches("tests/twenty") - before == 2
    assert store.downloads == 1


def test_always_follows_a_moved_tag_and_if_not_present_keeps_the_cache(
    tmp_path: Path, open_registry: Registry
) -> None:
    arch, _ = testreg.host_architecture()
    store = _store(tmp_path, open_registry)
    name = f"{open_registry.host}/tests/moving:latest"
    for text in ("one\n", "two\n"):
        box = testreg.layer(testreg.busybox_root(marker=text))
        open_registry.push_image("tests/moving", "latest", [box], testreg.config([box], arch))
        image = store.pull(name, reference.pull_policy(name, None))  # Always: asks the registry
        assert Path(image.root, "etc/marker").read_text() == text
        cached = store.cached(name, "IfNotPresent")
        assert cached is not None and cached.root == image.root
    assert store.cached(name, "Always") is None  # Always never answers from the cache alone


def test_the_cache_bound_evicts_the_least_recently_used(
    tmp_path: Path, open_registry: Registry
) -> None:
    names = open_registry.names
    store = _store(tmp_path, open_registry, max_bytes=2_500_000)  # about one busybox image
    first = store.pull(names["marker"], "IfNotPresent")
    store.release(first)
    second = store.pull(names["noshell"], "IfNotPresent")  # held: running
    assert not Path(first.root).exists() and Path(second.root).exists()
    assert store.cached(names["marker"], "IfNotPresent") is None
    assert store.usage() <= 2_500_000
    # A held root is never evicted, even when the bound cannot be kept.
    third = store.pull(names["marker"], "IfNotPresent")
    assert Path(second.root).exists() and Path(third.root).exists()
    store.release(second)
    store.release(third)
    assert not Path(second.root).exists()


def test_a_corrupt_blob_is_refused_and_never_cached(
    tmp_path: Path, open_registry: Registry
) -> None:
    arch, _ = testreg.host_architecture()
    box = testreg.layer(testreg.busybox_root(marker="tampered\n"))
    open_registry.push_image("tests/tampered", "1", [box], testreg.config([box], arch))
    hexdigest = box.digest.partition(":")[2]
    stored = next(
        (open_registry.workdir / "data").rglob(f"blobs/sha256/{hexdigest[:2]}/{hexdigest}/data")
    )
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0xFF  # the gzip trailer's CRC area: the tar still reads, the digest does not
    stored.write_bytes(bytes(data))
    store = _store(tmp_path, open_registry)
    with pytest.raises(ImageError, match=r"digest|not a valid compressed tar"):
        store.pull(f"{open_registry.host}/tests/tampered:1", "IfNotPresent")
    assert not list((tmp_path / "images" / "blobs" / "sha256").iterdir())
    assert not list((tmp_path / "images" / "roots").iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_says_so(tmp_path: Path, open_registry: Registry) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)], check=True)
    try:
        store = ImageStore(small / "images", Client(insecure=frozenset({open_registry.host})), GiB)
        with pytest.raises(ImageError, match="no space left on the device of the image cache"):
            store.pull(open_registry.names["marker"], "IfNotPresent")
    finally:
        layers.unmount(str(small))


@pytest.mark.skipif(
    not os.environ.get("KUEUE_TES_TEST_NETWORK"),
    reason="pulls from Docker Hub: set KUEUE_TES_TEST_NETWORK=1 where the Internet is reachable",
)
def test_a_public_multi_platform_image_from_docker_hub(tmp_path: Path) -> None:
    """Docker Hub's anonymous bearer tokens, its index, its redirects to blob storage."""
    store = ImageStore(tmp_path / "images", Client(), 10 * GiB)
    image = store.pull("busybox:1.36", "IfNotPresent")
    assert Path(image.root, "bin/busybox").is_file() and image.cmd == ("sh",)
    assert image.image_id.startswith("docker.io/library/busybox@sha256:")


# -- containers on their images -------------------------------------------------------------------


@pytest.fixture
def image_cluster(tmp_path: Path, open_registry: Registry) -> Iterator[Callable[..., LocalCluster]]:
    """Build LocalClusters that pull from the test registry; close them afterwards."""
    made: list[tuple[LocalCluster, ImageSource]] = []
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bwrap is not installed")

    def make(overlay: bool = True) -> LocalCluster:
        store = _store(tmp_path, open_registry, f"images{len(made)}")
        usable, volatile, why = layers.probe(tmp_path)
        if overlay and not usable:
            pytest.skip(f"overlays cannot be mounted here: {why}")
        source = ImageSource(
            store, frozenset({"kueue-tes:ours"}), overlay and usable, volatile, why
        )
        cluster = LocalCluster(tmp_path / f"rt{len(made)}", 4, 8 * GiB, bwrap=bwrap, images=source)
        made.append((cluster, source))
        return cluster

    yield make
    for cluster, _ in made:
        cluster.close()


def _run(
    cluster: LocalCluster, task: str, containers: list[dict[str, Any]], **kw: Any
) -> dict[str, Any]:
    rec = Recorder(cluster)
    configmap, job = make_job(task, containers, **kw)
    cluster.submit(task, configmap, job)
    rec.until(job_done(task), timeout=60)
    return _pod(cluster, task)


def _log(cluster: LocalCluster, task: str, name: str) -> str:
    return cluster.read_log(task, name)


def test_entrypoint_cmd_env_and_working_dir_follow_kubernetes_rules(
    image_cluster: Callable[..., LocalCluster], open_registry: Registry
) -> None:
    cluster = image_cluster()
    image = open_registry.names["config"]
    containers = [
        {"name": "neither", "image": image},  # Entrypoint + Cmd
        {
            "name": "args",
            "image": image,
            "args": ["from-args", "$(OWN)"],
            "env": [{"name": "OWN", "value": "own"}],
        },
        {
            "name": "command",
            "image": image,
            "command": ["/bin/sh", "-c", "echo $0 $FROM_IMAGE $SHARED $PATH; pwd"],
            "args": ["cmd-args"],
            "env": [{"name": "SHARED", "value": "container"}],
        },
        {"name": "workdir", "image": image, "command": ["pwd"], "workingDir": "/tmp/made"},
    ]
    pod = _run(cluster, "entry", containers)
    assert pod["status"]["phase"] == "Succeeded", json.dumps(pod["status"], indent=1)
    assert _log(cluster, "entry", "neither") == "entry from-cmd\n"
    assert _log(cluster, "entry", "args") == "entry from-args own\n"  # args replace Cmd
    assert (
        _log(cluster, "entry", "command") == "cmd-args image container /bin:/image/bin\n/srv/app\n"
    )
    assert _log(cluster, "entry", "workdir") == "/tmp/made\n"
    statuses = _statuses(pod)
    assert statuses["neither"]["imageID"].startswith(f"{open_registry.host}/tests/config@sha256:")
    assert statuses["neither"]["image"] == image


def test_each_start_writes_its_own_layer_and_the_image_stays_clean(
    image_cluster: Callable[..., LocalCluster], open_registry: Registry
) -> None:
    cluster = image_cluster()
    image = open_registry.names["marker"]
    write = "echo changed > /etc/marker; echo new > /etc/new; cat /etc/marker"
    containers = [
        {"name": "writer", "image": image, "command": ["sh", "-c", write]},
        {"name": "reader", "image": image, "command": ["sh", "-c", "cat /etc/marker; ls /etc"]},
        {
            "name": "locked",
            "image": image,
            "command": ["sh", "-c", "echo x > /etc/new || echo refused"],
            "securityContext": {"readOnlyRootFilesystem": True},
        },
        {"name": "ours", "image": "kueue-tes:ours", "command": ["cat", "/etc/os-release"]},
    ]
    pod = _run(cluster, "layers", containers[1:], init=containers[:1])
    assert pod["status"]["phase"] == "Succeeded", json.dumps(pod["status"], indent=1)
    assert _log(cluster, "layers", "writer") == "changed\n"
    # The writer's /etc/new stayed in its own layer; resolv.conf and hosts come from the host.
    assert (
        _log(cluster, "layers", "reader")
        == "marker from the image\nhosts\nmarker\npasswd\nresolv.conf\n"
    )
    assert "refused" in _log(cluster, "layers", "locked")
    assert "ID=" in _log(cluster, "layers", "ours")  # our own containers see the host's root
    assert _statuses(pod)["ours"]["imageID"] == ""
    store_root = next((Path(cluster._root).parent).glob("images0/roots/*"))
    assert (store_root / "etc/marker").read_text() == "marker from the image\n"
    assert not (store_root / "etc/new").exists()


def test_an_image_without_a_shell_runs(
    image_cluster: Callable[..., LocalCluster], open_registry: Registry
) -> None:
    cluster = image_cluster(overlay=False)  # read-only roots, as where overlays cannot mount
    image = open_registry.names["noshell"]
    containers = [
        {"name": "bare", "image": image, "command": ["/app/busybox", "cat", "/etc/marker"]},
        {"name": "no-sh", "image": image, "command": ["sh", "-c", "true"]},
    ]
    pod = _run(cluster, "bare", containers)
    assert _log(cluster, "bare", "bare") == "no shell here\n"
    no_sh = _statuses(pod)["no-sh"]["state"]["terminated"]
    assert no_sh["reason"] == "StartError" and "executable file not found" in no_sh["message"]


def test_pull_errors_wait_with_kubelets_reasons(
    image_cluster: Callable[..., LocalCluster], open_registry: Registry
) -> None:
    cluster = image_cluster()
    rec = Recorder(cluster)
    missing = f"{open_registry.host}/tests/nosuch:1"
    configmap, job = make_job("nopull", [{"name": "c", "image": missing, "command": ["true"]}])
    cluster.submit("nopull", configmap, job)

    def waiting(reason: str) -> Callable[[Any], bool]:
        def match(obs: Any) -> bool:
            if obs.kind != "Pod" or obs.obj is None or "containerStatuses" not in obs.obj["status"]:
                return False
            state = obs.obj["status"]["containerStatuses"][0]["state"].get("waiting", {})
            return bool(state.get("reason") == reason)

        return match

    pulled = rec.until(waiting("ErrImagePull"), timeout=30).obj
    assert pulled is not None
    message = pulled["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "not found (MANIFEST_UNKNOWN: manifest unknown)" in message
    backoff = rec.until(waiting("ImagePullBackOff"), timeout=30).obj
    assert backoff is not None and backoff["status"]["phase"] == "Pending"
    cluster.delete("nopull")
