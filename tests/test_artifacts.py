"""artifacts: the crash-safe folder swap and its recovery, file modes, strict JSON, text decoding."""

import json
import os
import subprocess
import sys

import pytest

from regrad_lib.io import artifacts, paths


def _folder(path, content):
    path.mkdir()
    (path / "data.txt").write_text(content)
    return path


def _content(path):
    return (path / "data.txt").read_text() if path.exists() else None


# Every state a kill can leave during atomic_dir's swap (see its comment), and the copy recovery must keep.
SWAP_STATES = {
    "writing the temporary folder": (["target:old", "tmp:partial"], "old"),
    "temporary folder renamed to .new": (["target:old", "new:new"], "new"),
    "first folder: .new only": (["new:new"], "new"),
    "old moved aside": (["old:old", "new:new"], "new"),
    "new in place, old not yet deleted": (["target:new", "old:old"], "new"),
    "nothing left to do": (["target:new"], "new"),
}


@pytest.mark.parametrize("state", list(SWAP_STATES))
def test_recover_dir_keeps_the_newest_complete_copy(tmp_path, state):
    present, expected = SWAP_STATES[state]
    target = tmp_path / "checkpoint"
    names = {"target": target, "new": tmp_path / ".checkpoint.new", "old": tmp_path / ".checkpoint.old",
             "tmp": tmp_path / ".checkpoint.999999999.abc.tmp"}   # no such process: a dead writer's
    for item in present:
        kind, content = item.split(":")
        _folder(names[kind], content)
    assert artifacts.recover_dir(target) == target
    assert _content(target) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    with artifacts.atomic_dir(target) as tmp:    # and the next write works from there
        (tmp / "data.txt").write_text("next")
    assert _content(target) == "next" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_recover_dir_leaves_a_live_writer_alone(tmp_path):
    live = _folder(tmp_path / f".checkpoint.{os.getpid()}.abc.tmp", "in progress")
    assert artifacts.recover_dir(tmp_path / "checkpoint") is None
    assert _content(live) == "in progress"


def test_a_failed_write_leaves_the_old_folder(tmp_path):
    target = _folder(tmp_path / "out", "old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_dir(target) as tmp:
            (tmp / "data.txt").write_text("half")
            raise RuntimeError("disk full")
    assert _content(target) == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask):
    script = f"""
import os
from regrad_lib.io import artifacts
os.umask({umask})
artifacts.write_json({str(tmp_path / "a.json")!r}, {{"x": 1}})
with artifacts.atomic_dir({str(tmp_path / "d")!r}) as tmp:
    (tmp / "f").write_text("x")
"""
    subprocess.run([sys.executable, "-c", script], check=True,
                   env={**os.environ, "PYTHONPATH": str(paths.repo_root())})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


def test_json_is_written_strict(tmp_path):
    with pytest.raises(ValueError, match=r"bad.json: refusing to write a non-finite number"):
        artifacts.write_json(tmp_path / "bad.json", {"gamma": float("nan")})
    with pytest.raises(ValueError, match=r"bad.jsonl: refusing"):
        artifacts.write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}, {"x": float("inf")}])
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.jsonl").exists()
    artifacts.write_json(tmp_path / "ok.json", {"x": None})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"x": None}


def test_read_json_drops_a_bom_and_names_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    assert artifacts.read_json(path) == {"a": 1}
    path.write_bytes(b'{\n"a": "\xff"}')
    with pytest.raises(ValueError, match=r"x.json: line 2: not UTF-8 text \(byte 0xff at offset 8"):
        artifacts.read_json(path)
