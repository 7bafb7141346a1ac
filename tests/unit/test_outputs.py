"""Output planning: files, directories, wildcards with path_prefix, and what is not uploaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.models import FileType, Output
from worker.sequencer import outputs
from worker.sequencer.outputs import Upload


@pytest.fixture
def vol(tmp_path: Path) -> Path:
    """The work volume as the sequencer sees it: container /x is <vol>/x."""
    root = tmp_path / "vol"
    root.mkdir()
    return root


def _local(vol: Path) -> Callable[[str], Path]:
    return lambda container: vol / container.lstrip("/")


def _write(vol: Path, *paths: str) -> None:
    for path in paths:
        target = vol / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path)


def _plan(vol: Path, **fields: object) -> outputs.OutputPlan:
    return outputs.plan_output(Output.model_validate(fields), _local(vol), root=vol)


def _urls(plan: outputs.OutputPlan) -> list[tuple[str, str]]:
    return [(u.container_path, u.url) for u in plan.uploads]


def test_file_present(vol: Path) -> None:
    _write(vol, "/data/out.txt")
    plan = _plan(vol, path="/data/out.txt", url="s3://b/res/out.txt")
    assert plan.uploads == [Upload(vol / "data/out.txt", "/data/out.txt", "s3://b/res/out.txt")]
    assert plan.notes == []


def test_file_missing_is_a_note_not_an_error(vol: Path) -> None:
    plan = _plan(vol, path="/data/none.txt", url="s3://b/none.txt")
    assert plan.uploads == []
    assert plan.notes == ["output /data/none.txt not found; nothing uploaded"]


def test_file_that_is_a_directory_says_to_declare_it(vol: Path) -> None:
    (vol / "data" / "d").mkdir(parents=True)
    plan = _plan(vol, path="/data/d", url="s3://b/d")
    assert plan.uploads == []
    assert "declare it DIRECTORY" in plan.notes[0]


def test_directory_is_flattened_one_upload_per_file(vol: Path) -> None:
    _write(
        vol,
        "/data/res/a.txt",
        "/data/res/sub/b.txt",
        "/data/res/sub/deep/c.txt",
        "/data/res/.hidden",
    )
    (vol / "data" / "res" / "empty").mkdir()
    plan = _plan(vol, path="/data/res", url="s3://b/run1/", type="DIRECTORY")
    assert _urls(plan) == [
        ("/data/res/.hidden", "s3://b/run1/.hidden"),
        ("/data/res/a.txt", "s3://b/run1/a.txt"),
        ("/data/res/sub/b.txt", "s3://b/run1/sub/b.txt"),
        ("/data/res/sub/deep/c.txt", "s3://b/run1/sub/deep/c.txt"),
    ]
    assert plan.notes == []


def test_directory_missing_is_a_note(vol: Path) -> None:
    plan = _plan(vol, path="/data/res", url="s3://b/run1", type="DIRECTORY")
    assert (plan.uploads, plan.notes) == ([], ["output /data/res not found; nothing uploaded"])


def test_glob_with_path_prefix(vol: Path) -> None:
    _write(vol, "/data/out/a.txt", "/data/out/b.txt", "/data/out/c.log")
    plan = _plan(vol, path="/data/out/*.txt", path_prefix="/data/", url="s3://b/res")
    assert _urls(plan) == [
        ("/data/out/a.txt", "s3://b/res/out/a.txt"),
        ("/data/out/b.txt", "s3://b/res/out/b.txt"),
    ]
    assert plan.notes == []


def test_glob_question_mark_and_brackets_per_segment(vol: Path) -> None:
    _write(vol, "/data/run/a.log", "/data/ran/b.log", "/data/ran/c.log", "/data/rain/a.log")
    plan = _plan(vol, path="/data/r?n/[ab].log", path_prefix="/data", url="ftp://h/up/")
    assert _urls(plan) == [
        ("/data/ran/b.log", "ftp://h/up/ran/b.log"),
        ("/data/run/a.log", "ftp://h/up/run/a.log"),
    ]


def test_double_star_is_not_recursive_but_matched_directories_are_uploaded_whole(
    vol: Path,
) -> None:
    _write(vol, "/data/top.txt", "/data/sub/one.txt", "/data/sub/deeper/two.txt")
    plan = _plan(vol, path="/data/**", path_prefix="/data/", url="s3://b/x")
    assert _urls(plan) == [
        ("/data/sub/deeper/two.txt", "s3://b/x/sub/deeper/two.txt"),
        ("/data/sub/one.txt", "s3://b/x/sub/one.txt"),
        ("/data/top.txt", "s3://b/x/top.txt"),
    ]
    # "**" is "*": it does not reach into sub/ by itself, so this matches nothing there.
    plan = _plan(vol, path="/data/**/two.txt", path_prefix="/data/", url="s3://b/x")
    assert plan.uploads == []


def test_glob_matching_a_nested_directory(vol: Path) -> None:
    _write(vol, "/work/sample1/out/r.bam", "/work/sample1/out/qc/r.html", "/work/sample2/x.txt")
    plan = _plan(
        vol, path="/work/sample*/out", path_prefix="/work", url="s3://b/p", type="DIRECTORY"
    )
    assert _urls(plan) == [
        ("/work/sample1/out/qc/r.html", "s3://b/p/sample1/out/qc/r.html"),
        ("/work/sample1/out/r.bam", "s3://b/p/sample1/out/r.bam"),
    ]


def test_glob_without_match_is_a_note(vol: Path) -> None:
    _write(vol, "/data/out/a.txt")
    for pattern in ("/data/out/*.csv", "/nowhere/*.txt"):
        plan = _plan(vol, path=pattern, path_prefix="/data", url="s3://b/res")
        assert plan.uploads == []
        assert plan.notes == [f"output {pattern} matched nothing; nothing uploaded"]


def test_glob_prefix_that_does_not_match_keeps_the_whole_path(vol: Path) -> None:
    _write(vol, "/data/out/a.txt")
    plan = _plan(vol, path="/data/out/*.txt", path_prefix="/elsewhere", url="s3://b/res")
    assert _urls(plan) == [("/data/out/a.txt", "s3://b/res/data/out/a.txt")]
    assert "does not start /data/out/a.txt" in plan.notes[0]


def test_glob_without_path_prefix_uses_the_fixed_directories(vol: Path) -> None:
    _write(vol, "/data/out/a.txt")
    plan = outputs.plan_output(
        Output.model_construct(
            path="/data/out/*.txt", url="s3://b/r", path_prefix=None, type=FileType.FILE
        ),
        _local(vol),
    )
    assert _urls(plan) == [("/data/out/a.txt", "s3://b/r/a.txt")]


def test_links_out_of_the_work_volume_are_not_uploaded(vol: Path, tmp_path: Path) -> None:
    secret = tmp_path / "environ"
    secret.write_text("AWS_SECRET_ACCESS_KEY=...")
    _write(vol, "/data/res/ok.txt")
    (vol / "data" / "res" / "leak").symlink_to(secret)
    (vol / "data" / "res" / "inside").symlink_to(vol / "data" / "res" / "ok.txt")
    (vol / "data" / "res" / "loopdir").symlink_to(vol / "data")
    plan = _plan(vol, path="/data/res", url="s3://b/r", type="DIRECTORY")
    assert _urls(plan) == [
        ("/data/res/inside", "s3://b/r/inside"),
        ("/data/res/ok.txt", "s3://b/r/ok.txt"),
    ]
    assert any("leak leads outside the task's work volume" in n for n in plan.notes)
    assert any("loopdir is a symbolic link to a directory" in n for n in plan.notes)
    file_plan = _plan(vol, path="/data/res/leak", url="s3://b/leak")
    assert file_plan.uploads == []
    assert "outside the task's work volume" in file_plan.notes[0]


def test_plan_outputs_and_output_file_log(vol: Path) -> None:
    _write(vol, "/data/a.txt")
    plan = outputs.plan_outputs(
        [
            Output(path="/data/a.txt", url="s3://b/a.txt"),
            Output(path="/data/missing", url="s3://b/m"),
        ],
        _local(vol),
        root=vol,
    )
    assert len(plan.uploads) == 1
    assert plan.notes == ["output /data/missing not found; nothing uploaded"]
    assert outputs.output_file_log(plan.uploads[0]) == {
        "url": "s3://b/a.txt",
        "path": "/data/a.txt",
        "size_bytes": len("/data/a.txt"),
    }


def test_has_wildcards() -> None:
    assert outputs.has_wildcards("/a/*.txt")
    assert outputs.has_wildcards("/a/[ab]")
    assert outputs.has_wildcards("/a/?")
    assert not outputs.has_wildcards("/a/b.txt")
