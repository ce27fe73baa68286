"""videosys.utils.files: JSON and other outputs are written whole or not at all."""

import json
import os
import stat

import pytest

from videosys.utils.files import atomic_path, write_json


def test_write_json_replaces_whole_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "report.json"  # the folder is created
    write_json(str(path), {"prompt": "un cercle rouge", "psnr": 31.5})
    assert json.loads(path.read_text(encoding="utf-8")) == {"prompt": "un cercle rouge", "psnr": 31.5}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not mkstemp's private 0600

    with pytest.raises(TypeError):  # not JSON-serialisable: fails half-way through the dump
        write_json(str(path), {"ok": 1, "bad": object()})
    assert json.loads(path.read_text(encoding="utf-8"))["psnr"] == 31.5
    assert sorted(os.listdir(path.parent)) == ["report.json"]  # no temporary file left


def test_atomic_path_removes_the_temporary_file_on_error(tmp_path):
    target = tmp_path / "video.mp4"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target), ".mp4") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"\x00" * 10)
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
