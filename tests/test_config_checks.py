"""Bad input is refused with a message naming it, before any process starts, weight loads or step runs."""

import json
import multiprocessing
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import videosys.core.engine as engine_module
from videosys import CogVideoXConfig, LatteConfig, LattePipeline, OpenSoraConfig, OpenSoraPlanConfig, save_video
from videosys.cli import build_parser, main as cli_main, make_config
from videosys.core.config import OVERSUBSCRIBE_ENV
from videosys.core.pipeline import NonFiniteError
from videosys.models.modules.pretrained import CheckpointMismatchError
from videosys.utils.hub import CheckpointError

FAMILIES = {"latte": LatteConfig, "cogvideox": CogVideoXConfig, "open-sora": OpenSoraConfig,
            "open-sora-plan": OpenSoraPlanConfig}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "videosys", "assets", "demo-latte")

BAD_FIELDS = [  # (field, value, what the message says)
    ("guidance_scale", "high", "guidance_scale must be a number"),
    ("height", -64, "height must be >= 1, got -64"),
    ("width", 64.0, "width must be an integer"),
    ("fps", 0, "fps must be > 0, got 0"),
    ("num_inference_steps", 0, "num_inference_steps must be >= 1"),
    ("guidance_scale", float("nan"), "guidance_scale must be finite"),
    ("num_gpus", True, "num_gpus must be an integer, got True"),
    ("num_gpus", 2.0, "num_gpus must be an integer"),
    ("progress_bar", 1, "progress_bar must be true or false, got 1"),
    ("enable_teacache", "yes", "enable_teacache must be true or false"),
    ("teacache_thresh", -0.1, "teacache_thresh must be >= 0"),
    ("heartbeat_timeout", 0, "heartbeat_timeout must be > 0"),
    ("max_text_length", "long", "max_text_length must be an integer"),
    ("model_path", 3, "model_path must be a string or None"),
]


@pytest.fixture(autouse=True)
def no_processes_or_weights(monkeypatch):
    """Nothing here may build a pipeline through the engine: every bad input is refused before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built for a bad input")

    monkeypatch.setattr(engine_module, "_build", refuse)
    yield
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("field,value,message", BAD_FIELDS)
def test_bad_field_values_are_refused_by_every_family(name, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FAMILIES[name](preset="tiny", **{field: value})


def test_family_fields_are_checked_too():
    with pytest.raises(ValueError, match="decode_chunk_size must be >= 1"):
        LatteConfig(preset="tiny", decode_chunk_size=0)
    with pytest.raises(ValueError, match="positive_prompt must be a string"):
        OpenSoraPlanConfig(preset="tiny", positive_prompt=3)  # read by the family before BaseConfig's checks
    with pytest.raises(ValueError, match=r"tile_overlap_factor must be in \[0, 1\)"):
        OpenSoraPlanConfig(preset="tiny", tile_overlap_factor=1.5)
    with pytest.raises(ValueError, match="num_frames must be an integer"):
        LatteConfig(preset="tiny", num_frames="ten")
    with pytest.raises(ValueError, match="'ten' is neither a frame count"):
        OpenSoraConfig(preset="tiny", num_frames="ten")  # Open-Sora also takes "4s"
    config = LatteConfig(preset="tiny", guidance_scale=7, teacache_thresh=0)  # an int is a fine float
    assert config.guidance_scale == 7.0 and isinstance(config.guidance_scale, float)


@pytest.mark.parametrize("kwargs,message", [
    (dict(guidance_scale="high"), "guidance_scale must be a number"), (dict(num_frames="ten"), "num_frames must be"),
    (dict(height=-64), "height must be >= 1"), (dict(num_inference_steps=2.5), "num_inference_steps must be"),
])
def test_generate_arguments_get_the_same_checks(tiny_latte, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_latte.generate("a dog", **kwargs)


def test_yaml_and_cli_values_are_checked(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: latte\npreset: tiny\nguidance_scale: high\n")
    with pytest.raises(ValueError, match="guidance_scale must be a number or None, got 'high'"):
        LatteConfig.from_yaml(str(path))
    assert cli_main(["generate", "--config", str(path), "--prompt", "x"]) == 2
    assert "guidance_scale must be a number" in capsys.readouterr().err
    for setting, message in (("guidance_scale=high", "guidance_scale must be a number"),
                             ("num_frames=ten", "num_frames must be an integer"),
                             ("num_gpus=true", "num_gpus must be an integer"),
                             ("mask_feature=1", "mask_feature must be true or false")):
        assert cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "x", "--set", setting]) == 2
        assert message in capsys.readouterr().err, setting
    args = build_parser().parse_args(["generate", "--model", "open-sora", "--preset", "tiny", "--prompt", "x",
                                      "--set", "guidance_scale=7", "--set", "aspect_ratio=1:1", "--set", "aes=none"])
    config = make_config(args)
    assert (config.guidance_scale, config.aspect_ratio, config.aes) == (7.0, "1:1", None)


def test_process_counts_are_checked_before_spawning(monkeypatch, tmp_path):
    monkeypatch.delenv(OVERSUBSCRIBE_ENV, raising=False)
    monkeypatch.setattr("videosys.core.config.available_cores", lambda: 2)
    with pytest.raises(ValueError, match=f"num_gpus=3 CPU processes but .* 2 cores.*{OVERSUBSCRIBE_ENV}=1"):
        engine_module.VideoSysEngine(LatteConfig(preset="tiny", num_gpus=3))
    monkeypatch.setenv(OVERSUBSCRIBE_ENV, "1")
    LatteConfig(preset="tiny", num_gpus=3).check_launch(3, spawning=True)  # the override lets it through
    with pytest.raises(ValueError, match="num_gpus must be even, got 3"):
        LatteConfig(preset="tiny", num_gpus=3, cfg_parallel=True)
    # Ulysses families: heads must divide by sp (tiny CogVideoX has 2 heads, tiny Open-Sora-Plan v1.2 has 4)
    with pytest.raises(ValueError, match="its 2 heads do not divide by sp=4"):
        engine_module.VideoSysEngine(CogVideoXConfig(preset="tiny", num_gpus=4))
    with pytest.raises(ValueError, match=r"its 2 heads do not divide by sp=3 \(num_gpus=6 with cfg_parallel"):
        CogVideoXConfig(preset="tiny", num_gpus=6, cfg_parallel=True).check_launch(6, spawning=True)
    with pytest.raises(ValueError, match="its 4 heads do not divide by sp=3"):
        OpenSoraPlanConfig(preset="tiny", num_gpus=3).check_launch(3, spawning=True)
    OpenSoraPlanConfig(preset="tiny", version="v110", num_gpus=3).check_launch(3, spawning=True)  # DSP: no limit
    LatteConfig(preset="tiny", num_gpus=3).check_launch(3, spawning=True)
    # a checkpoint folder: its transformer config.json says, and no weights need to be there
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"num_attention_heads": 30}))
    with pytest.raises(ValueError, match="its 30 heads do not divide by sp=4"):
        engine_module.VideoSysEngine(CogVideoXConfig(model_path=str(tmp_path), num_gpus=4))


def test_tiny_head_counts_match_the_tiny_models():
    from videosys.models.cogvideox.pipeline import tiny_components as cogvideox_tiny
    from videosys.models.open_sora_plan.pipeline import tiny_components as osp_tiny

    assert OpenSoraPlanConfig(preset="tiny").sp_heads() == osp_tiny("v120")[0].config.num_attention_heads
    assert CogVideoXConfig(preset="tiny").sp_heads() == cogvideox_tiny()[0].config.num_attention_heads
    assert OpenSoraPlanConfig(preset="tiny", version="v110").sp_heads() is None


@pytest.mark.parametrize("make_bad,message", [
    (lambda tmp: tmp, "is a folder"),
    (lambda tmp: (tmp / "a-file.txt").write_text("x") and tmp / "a-file.txt" / "out.mp4", "is a file, not a folder"),
    (lambda tmp: tmp / "clip.gif", "written as H.264 .mp4 only"),
    (lambda tmp: tmp / "clip", "written as H.264 .mp4 only"),
])
def test_bad_output_paths_are_refused_before_generating(tmp_path, capsys, monkeypatch, make_bad, message):
    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was built for a bad output path")

    monkeypatch.setattr(engine_module, "VideoSysEngine", no_engine)
    bad = str(make_bad(tmp_path))
    assert cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "x", "--output", bad]) == 2
    err = capsys.readouterr().err
    assert message in err and repr(bad) in err and ".tmp-" not in err
    with pytest.raises(ValueError, match=re.escape(message)):  # the API refuses it the same way
        save_video(np.zeros((2, 16, 16, 3), np.uint8), bad)
    assert sorted(os.listdir(tmp_path)) in ([], ["a-file.txt"])  # nothing written


def test_devices_are_checked_with_a_message(capsys):
    assert cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "x", "--device", "tpu"]) == 2
    assert "device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'tpu'" in capsys.readouterr().err
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="only .* CUDA device"):
            LatteConfig(preset="tiny", device=f"cuda:{torch.cuda.device_count()}").torch_device()
    else:
        assert cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "x", "--device", "cuda"]) == 2
        assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_unreadable_checkpoints_name_the_file(tmp_path, capsys):
    broken = tmp_path / "truncated"
    shutil.copytree(DEMO, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"cannot read the weights file '{re.escape(str(weights))}'.*truncated"):
        LattePipeline.from_config(LatteConfig(model_path=str(broken)))
    assert cli_main(["generate", "--model", "latte", "--model-path", str(broken), "--prompt", "x",
                     "--output", str(tmp_path / "x.mp4")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err

    wrong_vae = tmp_path / "wrong-vae"
    shutil.copytree(DEMO, wrong_vae)
    config = json.loads((wrong_vae / "vae" / "config.json").read_text())
    (wrong_vae / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(CheckpointMismatchError, match=f"(?s)checkpoint '{re.escape(str(wrong_vae / 'vae'))}' does not "
                                                      "load into AutoencoderKL.*size mismatch"):
        LattePipeline.from_config(LatteConfig(model_path=str(wrong_vae)))


def test_non_finite_latents_raise_naming_the_first_step(tiny_latte):
    run = dict(num_frames=4, num_inference_steps=4)
    weight = tiny_latte.transformer.proj_out.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")  # a NaN weight in the checkpoint: every step is NaN
        with pytest.raises(NonFiniteError, match=r"denoising step 0 \(of 4"):
            tiny_latte.generate("a dog", **run)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    calls = []

    def nan_from_third_call(module, args, output):
        calls.append(1)
        return output * float("nan") if len(calls) >= 3 else output

    handle = tiny_latte.transformer.transformer_blocks[0].register_forward_hook(nan_from_third_call)
    try:
        with pytest.raises(NonFiniteError, match=r"denoising step 2 \(of 4"):
            tiny_latte.generate("a dog", **run)
    finally:
        handle.remove()
    assert torch.isfinite(tiny_latte.generate("a dog", **run).latents).all()  # and healthy again


def test_demo_model_warns_about_words_it_never_saw():
    pipeline = LattePipeline.from_config(LatteConfig(preset="demo", progress_bar=False))
    with pytest.warns(UserWarning, match="knows only the words of its training captions.*'running', 'zebra'"):
        pipeline.generate("a zebra running to the right", num_frames=2, num_inference_steps=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.generate("a red circle moving to the right", num_frames=2, num_inference_steps=1)
    tiny = LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.generate("a zebra running", num_frames=2, num_inference_steps=1)  # random weights: no promise to keep


def test_loading_prints_no_accelerate_notice_or_progress_bars(capfd):
    import transformers.utils.logging as transformers_logging

    LattePipeline.from_config(LatteConfig(preset="demo", progress_bar=False))
    err = capfd.readouterr().err
    assert "accelerate" not in err and "Loading weights" not in err and "it/s" not in err, err
    assert transformers_logging.is_progress_bar_enabled()  # the user's own setting is back


def test_cli_help_names_every_family_and_outputs_are_ignored():
    from videosys.models import FAMILIES as registered

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    help_text = next(a.help for a in generate._actions if a.dest == "model")
    assert all(name in help_text for name in registered) and "open-sora-plan" in help_text
    ignored = subprocess.run(["git", "check-ignore", "out.mp4", "output.mp4"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["out.mp4", "output.mp4"]


def test_eval_readme_commands_run_from_eval_teacache():
    """TeaCache's layout: every eval command runs from eval/teacache, as the page says (tests/
    test_documented_commands.py runs them there)."""
    text = open(os.path.join(ROOT, "eval", "README.md")).read()
    assert "runs from `eval/teacache`" in text
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, re.S))
    scripts = re.findall(r"python (\S+\.py)", blocks)
    assert len(scripts) >= 6 and not re.search(r"^\s*cd ", blocks, re.M)
    missing = [s for s in scripts if not os.path.isfile(os.path.join(ROOT, "eval", "teacache", s))]
    assert not missing, missing
