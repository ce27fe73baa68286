"""eval/teacache/experiments: prompts, file names, variants, resume after a kill, and the Ray path."""

import json
import os

import numpy as np
import pytest

from eval_helpers import load_eval_module
from videosys import read_video

gen = load_eval_module("experiments/utils.py", "videosys_eval_experiments_utils")

PROMPTS = ["a red circle moving to the right", "a blue square, moving up", "a cat's green eye"]
# the tiny Latte, as short as it goes: 4 frames, 2 steps
FAST = ["--preset", "tiny", "--num-frames", "4", "--num-inference-steps", "2", "--threads", "1"]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


def family(**variants):
    return gen.Family("latte", {"baseline": {}, **variants})


_ENGINES = {}


class _KeptEngine:
    """An engine built once per config for the whole test module (a build costs seconds here)."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, **kwargs)

    def save_video(self, *args, **kwargs):
        return self.engine.save_video(*args, **kwargs)

    def shutdown(self):
        pass


@pytest.fixture
def kept_engines(monkeypatch):
    import videosys.core.engine as engine_module

    real = engine_module.VideoSysEngine

    def build(config):
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key not in _ENGINES:
            _ENGINES[key] = _KeptEngine(real(config))
        return _ENGINES[key]

    monkeypatch.setattr(engine_module, "VideoSysEngine", build)


def test_vbench_prompts_are_read_without_importing_vbench(monkeypatch):
    import sys

    try:
        path = gen.vbench_info_path()
    except FileNotFoundError:
        pytest.skip("vbench is not installed (pip install --no-deps vbench==0.1.5)")
    prompts = gen.load_prompts()
    assert path.endswith("VBench_full_info.json") and "vbench" not in sys.modules
    assert len(prompts) == 946 and prompts[0] == "In a still frame, a stop sign"
    # two prompts are listed twice: one file each, 944 x 5 videos
    assert len(gen.make_jobs(prompts, list(range(5)), "out")) == 944 * 5


def test_missing_vbench_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(gen.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps vbench"):
        gen.load_prompts()


def test_jobs_names_order_and_subset(prompts_file, tmp_path):
    prompts = gen.load_prompts(prompts_file)
    assert prompts == PROMPTS
    jobs = gen.make_jobs(prompts[1:3] + prompts[1:2], [0, 1], str(tmp_path))
    assert [os.path.basename(j.path) for j in jobs] == [
        "a blue square, moving up-0.mp4", "a blue square, moving up-1.mp4",
        "a cat's green eye-0.mp4", "a cat's green eye-1.mp4"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a/b\n")
    with pytest.raises(ValueError, match="file name"):
        gen.load_prompts(str(bad))


def test_variant_needing_a_missing_cache_field_is_refused():
    with pytest.raises(SystemExit, match="not implemented"):
        gen.build_config(family(teacache={"teacache": {"threshold": 0.1}}), "teacache", {"preset": "tiny"})
    with pytest.raises(SystemExit, match="not in this videosys install"):
        gen.build_config(gen.Family("cogvideox-not-there", {"baseline": {}}), "baseline", {})
    config = gen.build_config(family(fewer={"num_inference_steps": 3}), "fewer",
                              {"preset": "tiny", "num_inference_steps": 7})
    assert config.num_inference_steps == 3  # the variant's override wins over the command line


def test_killed_run_leaves_no_partial_file_and_rerun_generates_only_the_missing(prompts_file, tmp_path,
                                                                                 monkeypatch, kept_engines):
    import imageio_ffmpeg

    out = tmp_path / "samples"
    argv = ["--prompts-file", prompts_file, "--num-prompts", "2", "--num-seeds", "2", "--output-dir", str(out), *FAST]
    real_write_frames = imageio_ffmpeg.write_frames
    opened = []

    def write_frames_killed_on_third_video(*args, **kwargs):
        writer = real_write_frames(*args, **kwargs)
        opened.append(args[0])
        if len(opened) < 3:
            return writer

        def killed():  # the process dies after two frames of the third video
            writer.send(None)  # start ffmpeg, as save_video starts us
            frame = yield
            for _ in range(2):
                writer.send(frame)
                frame = yield
            writer.close()
            raise KeyboardInterrupt

        return killed()

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", write_frames_killed_on_third_video)
    with pytest.raises(KeyboardInterrupt):
        gen.main(family(), argv)
    folder = out / "baseline"
    assert sorted(os.listdir(folder)) == ["a red circle moving to the right-0.mp4",
                                          "a red circle moving to the right-1.mp4", "settings.json", "stats.json"]
    assert os.path.basename(opened[2]).startswith(".tmp-")  # it was writing a temporary file, now removed
    stamps = {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder) if n.endswith(".mp4")}
    (folder / ".tmp-left-by-sigkill.mp4").write_bytes(b"\x00" * 100)  # what a SIGKILL leaves behind

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", real_write_frames)
    generated = []
    real_run = gen.Generator.run
    monkeypatch.setattr(gen.Generator, "run", lambda self, job, *a: generated.append(job.seed) or real_run(self, job, *a))
    gen.main(family(), argv)
    assert sorted(os.listdir(folder)) == sorted([f"{p}-{s}.mp4" for p in PROMPTS[:2] for s in (0, 1)]
                                                + ["settings.json", "stats.json"])
    assert generated == [0, 1]  # only the second prompt's two videos
    for name, stamp in stamps.items():
        assert os.stat(folder / name).st_mtime_ns == stamp  # the finished files were not rewritten
    for name in os.listdir(folder):
        if name.endswith(".mp4"):
            frames, fps = read_video(str(folder / name))
            assert frames.shape == (4, 64, 64, 3) and fps == 8
    stats = json.loads((folder / "stats.json").read_text())
    assert len(stats["videos"]) == 4 and [r["config"]["num_inference_steps"] for r in stats["runs"]] == [2, 2]
    assert all(v["steps"] == 2 and v["total_s"] > 0 for v in stats["videos"].values())
    assert sorted(v["run"] for v in stats["videos"].values()) == [0, 0, 1, 1]  # the killed run's two, then the rerun's
    assert [v["first_of_engine"] for v in stats["videos"].values()].count(True) == 2  # one per run that generated

    generated.clear()
    gen.main(family(), argv)  # everything there: nothing to do
    assert generated == []


@pytest.mark.slow
def test_ray_workers_write_the_same_files_as_one_process(prompts_file, tmp_path, kept_engines):
    pytest.importorskip("ray")
    # two videos, one per actor; the actors build their own engines (the in-process one is kept)
    argv = ["--prompts-file", prompts_file, "--start", "1", "--num-prompts", "1", "--num-seeds", "2", *FAST]
    gen.main(family(), argv + ["--output-dir", str(tmp_path / "local")])
    gen.main(family(), argv + ["--output-dir", str(tmp_path / "ray"), "--ray-workers", "2"])
    local, ray = tmp_path / "local" / "baseline", tmp_path / "ray" / "baseline"
    names = sorted(n for n in os.listdir(local) if n.endswith(".mp4"))
    assert len(names) == 2 and names == sorted(n for n in os.listdir(ray) if n.endswith(".mp4"))
    for name in names:
        a, b = read_video(str(local / name))[0], read_video(str(ray / name))[0]
        assert np.array_equal(a, b), name
    stats = json.loads((ray / "stats.json").read_text())
    assert sorted(stats["videos"]) == names


def test_standard_variants_switch_the_published_caches():
    latte = gen.Family("latte")
    # the papers' variants, then every registered method's published operating points
    from videosys.cache import published_names

    assert list(latte.variants)[:4] == ["baseline", "teacache-slow", "teacache-fast", "pab"]
    assert sorted(latte.variants) == sorted(["baseline", *published_names()])
    assert gen.build_config(latte, "baseline", {"preset": "tiny"}).cache_configs() == []
    fast = gen.build_config(latte, "teacache-fast", {"preset": "tiny"}).cache_configs()
    assert [type(c).__name__ for c in fast] == ["TeaCacheConfig"] and fast[0].threshold == 0.2
    pab = gen.build_config(latte, "pab", {"preset": "tiny"}).cache_configs()
    assert pab[0].spatial == ((100.0, 800.0), 2)


def test_stats_are_rebuilt_from_the_videos_on_disk_after_a_kill(prompts_file, tmp_path, monkeypatch, kept_engines):
    out = tmp_path / "samples"
    argv = ["--prompts-file", prompts_file, "--num-prompts", "1", "--num-seeds", "2", "--output-dir", str(out), *FAST]
    real_add = gen.StatsFile.add
    added = []

    def add_killed_on_second_video(self, name, stats):  # the kill lands after the second save, before its stats
        if added:
            raise KeyboardInterrupt
        added.append(name)
        real_add(self, name, stats)

    monkeypatch.setattr(gen.StatsFile, "add", add_killed_on_second_video)
    with pytest.raises(KeyboardInterrupt):
        gen.main(family(), argv)
    folder = out / "baseline"
    videos = sorted(n for n in os.listdir(folder) if n.endswith(".mp4"))
    assert len(videos) == 2 and len(json.loads((folder / "stats.json").read_text())["videos"]) == 1
    monkeypatch.setattr(gen.StatsFile, "add", real_add)
    gen.main(family(), argv)  # nothing left to generate: stats.json still catches up
    stats = json.loads((folder / "stats.json").read_text())["videos"]
    assert sorted(stats) == videos
    assert stats[added[0]]["steps"] == 2 and "recovered" not in stats[added[0]]
    assert [stats[n] for n in videos if n != added[0]] == [{"recovered": True}]  # no timings to report


@pytest.mark.slow
def test_ray_actors_get_their_share_of_the_cores(prompts_file, tmp_path, kept_engines):
    pytest.importorskip("ray")
    import torch

    from videosys.core.config import available_cores

    share = max(1, available_cores() // 2)
    driver = torch.get_num_threads()
    torch.set_num_threads(share + 1)  # an actor that inherited the driver's count would report this
    try:
        gen.main(family(), ["--prompts-file", prompts_file, "--num-prompts", "1", "--num-seeds", "2", "--preset",
                            "tiny", "--num-frames", "4", "--num-inference-steps", "2", "--ray-workers", "2",
                            "--output-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(driver)
    stats = json.loads((tmp_path / "baseline" / "stats.json").read_text())["videos"]
    assert len(stats) == 2 and all(v["threads"] == share for v in stats.values())


def test_a_run_with_other_settings_refuses_the_folder_unless_overwrite(prompts_file, tmp_path, kept_engines):
    """A smoke run, then a "real" one (here: other steps) into the same folder: resuming would count the smoke
    run's videos as its own, so it is refused, naming each difference; --overwrite starts over."""
    out = tmp_path / "samples"
    base = ["--prompts-file", prompts_file, "--num-prompts", "1", "--num-seeds", "1", "--output-dir", str(out),
            "--preset", "tiny", "--num-frames", "4", "--threads", "1"]
    gen.main(family(), base + ["--steps", "2"])
    folder = out / "baseline"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["family"] == "latte" and settings["preset"] == "tiny" and settings["num_inference_steps"] == 2
    with pytest.raises(SystemExit) as err:
        gen.main(family(), base + ["--steps", "3"])
    assert str(err.value) == (f"{folder} holds videos generated with other settings (num_inference_steps: 2 there, "
                              "3 now): give another --output-dir, or --overwrite to delete its videos and start over")
    gen.main(family(), base + ["--steps", "3", "--overwrite"])
    assert json.loads((folder / "settings.json").read_text())["num_inference_steps"] == 3
    stats = json.loads((folder / "stats.json").read_text())
    assert [r["config"]["num_inference_steps"] for r in stats["runs"]] == [3]  # the smoke run's stats went too
    assert [v["steps"] for v in stats["videos"].values()] == [3]


def test_videos_without_settings_are_not_resumed(prompts_file, tmp_path):
    folder = tmp_path / "baseline"
    folder.mkdir()
    (folder / "x-0.mp4").write_bytes(b"")  # a folder from before settings.json, or copied in by hand
    with pytest.raises(SystemExit, match="holds 1 videos but no settings.json"):
        gen.main(family(), ["--prompts-file", prompts_file, "--output-dir", str(tmp_path), *FAST])


def test_a_preset_writes_to_its_own_folder_by_default(prompts_file, monkeypatch):
    """The README's smoke run (--preset tiny: random weights) lands in samples/latte-tiny, not in the folder
    the real run resumes from."""
    chosen = []
    monkeypatch.setattr(gen, "generate_variant", lambda family, variant, args: chosen.append(args.output_dir) or {})
    for extra in (["--preset", "tiny"], [], ["--preset", "tiny", "--output-dir", "mine"]):
        gen.main(family(), ["--prompts-file", prompts_file, *extra])
    assert chosen == [os.path.join("samples", "latte-tiny"), os.path.join("samples", "latte"), "mine"]


def test_a_folder_from_before_settings_json_is_adopted_when_its_stats_agree(prompts_file, tmp_path, kept_engines,
                                                                             capsys):
    argv = ["--prompts-file", prompts_file, "--num-prompts", "1", "--num-seeds", "1", "--output-dir", str(tmp_path),
            *FAST]
    gen.main(family(), argv)
    folder = tmp_path / "baseline"
    settings = (folder / "settings.json").read_text()
    (folder / "settings.json").unlink()  # as an older videosys left it: videos and stats.json only
    gen.main(family(), argv)
    assert "no settings.json; its stats.json shows these settings made every video there: adopted" in \
        capsys.readouterr().out
    assert (folder / "settings.json").read_text() == settings
    assert len(json.loads((folder / "stats.json").read_text())["runs"]) == 1  # nothing was generated again
    (folder / "settings.json").unlink()
    with pytest.raises(SystemExit, match=r"holds 1 videos but no settings.json, and its stats.json records other "
                                         r"settings \(num_inference_steps: 2 there, 3 now\)"):
        gen.main(family(), argv + ["--num-inference-steps", "3"])


def test_overwrite_removes_the_metrics_of_the_deleted_videos_only(prompts_file, tmp_path, kept_engines):
    """metrics.json scores a folder's videos (in that folder) against a baseline (named in it): --overwrite of a
    folder removes its own metrics.json and those that scored against it; other metrics stay."""
    argv = ["--prompts-file", prompts_file, "--num-prompts", "1", "--num-seeds", "1", "--output-dir", str(tmp_path),
            *FAST]
    gen.main(family(), argv)
    baseline = tmp_path / "baseline"
    for name, against in (("baseline", tmp_path / "elsewhere"), ("teacache-slow", baseline),
                          ("pab", tmp_path / "elsewhere")):
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "metrics.json").write_text(json.dumps({"gt_video_dir": str(against)}))
    gen.main(family(), argv + ["--num-inference-steps", "3", "--overwrite"])
    assert not (baseline / "metrics.json").exists() and not (tmp_path / "teacache-slow" / "metrics.json").exists()
    assert (tmp_path / "pab" / "metrics.json").exists()
