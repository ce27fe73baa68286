"""`videosys tune`: the budget, the split, the search on a scripted scorer, and the command end to end (tiny)."""

import json
import os

import pytest

from videosys.eval import tune


def test_budget_parses_and_refuses_the_wrong_direction():
    assert [str(b) for b in tune.parse_budget("lpips<=0.03, psnr>=35")] == ["lpips<=0.03", "psnr>=35"]
    for bad, said in (("lpips>=0.03", "wrong way"), ("psnr<=30", "wrong way"), ("fvd<=3", "one of"),
                      ("ssim>=high", "not a number"), ("psnr>=nan", "finite"), ("0.03", "one of")):
        with pytest.raises(ValueError, match=said) as err:
            tune.parse_budget(bad)
        assert "--budget" in str(err.value)


def test_a_tightened_bound_is_nearer_perfect():
    assert str(tune.Bound("lpips", 0.04).tightened(0.5)) == "lpips<=0.02"
    assert str(tune.Bound("ssim", 0.9).tightened(0.5)) == "ssim>=0.95"
    assert abs(tune.Bound("psnr", 30.0).tightened(0.5).value - 33.0103) < 1e-4  # half the MSE


def test_a_bound_is_out_of_reach_once_the_rest_cannot_save_the_mean():
    lpips, psnr = tune.Bound("lpips", 0.03), tune.Bound("psnr", 35.0)
    assert lpips.reachable([0.1], 4) and not lpips.reachable([0.13], 4)  # 0.13 / 4 > 0.03 whatever follows
    assert psnr.reachable([10.0, 20.0], 3)  # a third video at 100 dB (identical) brings the mean to 43.3
    assert not psnr.reachable([10.0, 20.0, 30.0], 3) and not psnr.reachable([1.0, 1.0], 3)  # 102 / 3 < 35


def test_prompts_are_spread_and_split_into_disjoint_tuning_and_held_out_jobs():
    prompts = [f"p{i}" for i in range(24)]
    tuning, held_out = tune.split_jobs(prompts, 8, seeds=2)
    assert [p for p, _ in tuning] == ["p0", "p6", "p12", "p18"] and {s for _, s in tuning} == {0}
    assert [p for p, _ in held_out] == ["p3", "p3", "p9", "p9", "p15", "p15", "p21", "p21"]
    assert {s for _, s in held_out} == {1, 2}
    with pytest.raises(ValueError, match="--prompts"):
        tune.split_jobs(prompts, 1, seeds=1)
    with pytest.raises(ValueError, match="has 24"):
        tune.split_jobs(prompts, 25, seeds=1)


class ScriptedScorer:
    """A stand-in for tune.Scorer: a threshold t of "teacache-t" (or an interval) gives LPIPS t / 10 and work 1 - t."""

    def __init__(self):
        self.calls = []

    def score(self, spec, job):
        self.calls.append(spec)
        t = float(spec.rsplit("-", 1)[1].lstrip("i"))
        return {"spec": spec, "job": tune.job_key(job), "flops": 1000 - 1000 * min(t, 0.9), "ref_flops": 1000,
                "lpips": t / 10, "psnr": 40.0}


class AnyModel:
    def resolve_cache(self, spec):
        return spec


def test_the_ladder_finds_the_last_threshold_that_holds_and_bisects_towards_the_first_that_does_not():
    scorer, jobs = ScriptedScorer(), [("a", 0), ("b", 0)]
    search = tune.Search(scorer, AnyModel(), jobs, tune.parse_budget("lpips<=0.03"), refine=2, progress=lambda *a: None)
    search.ladder("teacache", "teacache-{}", float, [0.05, 0.1, 0.2, 0.5, 0.8])
    # binary search: 0.2 holds, 0.5 misses; bisection: 0.35 misses, 0.275 holds
    assert [s for s in dict.fromkeys(scorer.calls)] == ["teacache-0.2", "teacache-0.5", "teacache-0.35",
                                                        "teacache-0.275"]
    assert search.best.spec == "teacache-0.275" and search.best_of["teacache"].spec == "teacache-0.275"
    assert search.gentler["teacache"] == "teacache-0.2"
    assert scorer.calls.count("teacache-0.5") == 2 and search.results["teacache-0.5"].held is False
    # a video that alone puts the mean out of reach ends the candidate: 0.9 / 10 > 0.03 * 2
    assert search.run("teacache-0.9").jobs == 1 and "out of reach after 1 videos" in search.results["teacache-0.9"].reason


def test_a_candidate_that_cannot_do_less_work_than_the_best_stops_after_one_video():
    scorer, jobs = ScriptedScorer(), [("a", 0), ("b", 0), ("c", 0)]
    search = tune.Search(scorer, AnyModel(), jobs, tune.parse_budget("lpips<=0.05"), refine=0, progress=lambda *a: None)
    search.single("teacache", "teacache-0.4")
    gentle = search.run("teacache-0.1")
    assert gentle.held is None and gentle.jobs == 1 and "no less work" in gentle.reason
    assert search.best.spec == "teacache-0.4"


def test_tuned_spec_names_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tuned cache file"):
        tune.tuned_spec("@" + str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"cache":\n  teacache}\n')
    with pytest.raises(ValueError, match=r"bad\.json, line 2, column"):
        tune.tuned_spec("@" + str(bad))
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match='no "cache" entry'):
        tune.tuned_spec(str(empty))


def run_cli(*argv):
    from videosys.cli import main

    return main(list(argv))


def test_tune_end_to_end_on_the_tiny_model_its_file_drives_generate_and_check(tmp_path, capsys):
    output = str(tmp_path / "tuned.json")
    common = ["--model", "latte", "--preset", "tiny", "--steps", "3", "--num-frames", "4", "--prompts", "2",
              "--prompt-set", "builtin"]
    assert run_cli("tune", *common, "--budget", "psnr>=20", "--methods", "teacache", "taylorseer",
                   "--repeats", "0", "--output", output) == 0
    report = json.loads(open(output).read())
    first = capsys.readouterr().out
    assert report["budget"] == "psnr>=20" and report["tune"]["jobs"] and report["held_out"]["jobs"]
    assert report["cache"] != "none" and report["tune"]["means"]["psnr"] >= 20
    assert report["held_out"]["means"]["psnr"] >= 20 and report["tune"]["work"] < 1
    assert os.path.exists(output[:-5] + ".png") and os.path.exists(output[:-5] + ".run/scores.jsonl")
    assert "generations" in first

    # a rerun, with another budget, reuses the references and every score: no generation
    assert run_cli("tune", *common, "--budget", "psnr>=25", "--methods", "teacache", "taylorseer", "--no-pairs",
                   "--repeats", "0", "--output", output) == 0
    assert "\n0 generations scored" in capsys.readouterr().out
    # other generation settings: the run folder is refused, naming the difference
    assert run_cli("tune", *common[:-4], "--steps", "2", "--prompts", "2", "--prompt-set", "builtin",
                   "--budget", "psnr>=20", "--output", output) == 2
    assert "steps: 3 there, 2 now" in capsys.readouterr().err

    # the file is a cache spec for generate, and a quality gate
    video = str(tmp_path / "out.mp4")
    assert run_cli("generate", "--model", "latte", "--preset", "tiny", "--steps", "3", "--num-frames", "4",
                   "--prompt", "a red circle", "--cache", "@" + output, "--output", video) == 0
    assert os.path.getsize(video) > 0
    from videosys.cli import build_parser  # a server takes the file as its requests' default cache
    from videosys.cli_common import make_config

    serve_args = build_parser().parse_args(["serve", "--model", "latte", "--preset", "tiny", "--cache", "@" + output])
    assert make_config(serve_args).cache == report["cache"]
    assert run_cli("tune", *common, "--check", "@" + output, "--budget", "psnr>=99") == 1
    said = capsys.readouterr().out
    assert "MISSES psnr>=99" in said and f"{report['cache']} on 2 videos" in said
