"""HunyuanVideo-1.5's pipeline against diffusers' HunyuanVideo15Pipeline / HunyuanVideo15ImageToVideoPipeline on the
same tiny components, seed and first latents; the release's text constants; request checks; the diffusers-layout
folder round trip; the published defaults per checkpoint."""

import dataclasses

import numpy as np
import pytest
import torch

from videosys.core.config import RequestError
from videosys.models.hunyuanvideo15 import text as hv_text

from conftest import tiny_config, tiny_pipeline

MODEL = "hunyuanvideo-1.5"
PROMPTS = ['a red sign that reads "OPEN" on a door', "a dog running on the beach at sunset"]


def image(seed: int = 0, size=(60, 100)):
    """A smooth RGB image (PIL), 60 x 100: I2V's bucket at target size 64 is 48 x 80."""
    from PIL import Image

    y, x = np.mgrid[: size[0], : size[1]] / max(size)
    rgb = np.stack([np.sin(7 * x + seed), np.cos(5 * y), np.sin(3 * (x + y))], -1) * 0.5 + 0.5
    return Image.fromarray((rgb * 255).astype("uint8"))


def diffusers_pipeline(pipe, guidance_scale: float):
    """diffusers' pipeline over our tiny components (its transformer: diffusers' class with our state dict), its
    text lengths and template prefix set to the tiny stack's."""
    import diffusers
    from diffusers.guiders import ClassifierFreeGuidance

    transformer = diffusers.HunyuanVideo15Transformer3DModel(**dataclasses.asdict(pipe.transformer.config)).eval()
    transformer.load_state_dict(pipe.transformer.state_dict(), strict=True)
    parts = dict(text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, transformer=transformer, vae=pipe.vae,
                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config),
                 text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
                 guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))
    if pipe.image_encoder is not None:
        ref = diffusers.HunyuanVideo15ImageToVideoPipeline(**parts, image_encoder=pipe.image_encoder,
                                                           feature_extractor=pipe.feature_extractor)
    else:
        ref = diffusers.HunyuanVideo15Pipeline(**parts)
    # the release's constants are diffusers' own
    assert ref.system_message == hv_text.SYSTEM_MESSAGE
    assert (ref.tokenizer_max_length, ref.tokenizer_2_max_length) == (hv_text.MAX_TEXT_LENGTH, hv_text.MAX_GLYPH_LENGTH)
    assert ref.prompt_template_encode_start_idx == hv_text.RELEASE_CROP_START
    ref.prompt_template_encode_start_idx = pipe.crop_start
    ref.tokenizer_max_length, ref.tokenizer_2_max_length = pipe.config.max_text_length, pipe.config.max_glyph_length
    ref.set_progress_bar_config(disable=True)
    return ref


def compare(pipe, ref, prompts, seed: int = 3, **call):
    """Ours and diffusers' on the same first latents: final latents close, frames within one uint8 level."""
    out = pipe.generate(prompts, seed=seed, **call)
    latents = torch.randn(out.latents.shape, generator=torch.Generator().manual_seed(seed))
    v = pipe.config.check_request(dict(call, image=call.get("image")))
    args = dict(prompt=prompts, num_frames=v["num_frames"], num_inference_steps=v["num_inference_steps"],
                latents=latents)
    if "image" in call:
        args["image"] = call["image"]
    else:
        args.update(height=v["height"], width=v["width"])
    with torch.no_grad():
        ref_latents = ref(**args, output_type="latent").frames
        frames = ref(**args, output_type="np").frames  # (B, T, H, W, 3) in [0, 1]
    assert ref_latents.abs().max() > 0.1
    torch.testing.assert_close(out.latents, ref_latents.float(), atol=2e-4, rtol=1e-4)
    expected = np.round(np.asarray(frames) * 255).astype(np.int16)
    assert out.video.shape == expected.shape
    diff = np.abs(out.video.numpy().astype(np.int16) - expected)
    assert diff.max() <= 1, diff.max()
    return out


@pytest.fixture(scope="module")
def t2v():
    return tiny_pipeline(MODEL)


@pytest.fixture(scope="module")
def i2v():
    return tiny_pipeline(MODEL, preset="tiny-i2v")


def test_t2v_matches_diffusers_batched_with_glyphs(t2v):
    """Two prompts of different lengths (one with a quoted string: ByT5 states, one without: zeros), CFG 6."""
    compare(t2v, diffusers_pipeline(t2v, 6.0), PROMPTS)


def test_t2v_matches_diffusers_without_cfg(t2v):
    """guidance 1 (the CFG-distilled checkpoints): diffusers' guider off, one branch."""
    compare(t2v, diffusers_pipeline(t2v, 1.0), PROMPTS[:1], guidance_scale=1.0)


def test_i2v_matches_diffusers(i2v):
    """The image's bucket picks 48 x 80; first-frame latents, mask and SigLIP tokens as diffusers builds them."""
    out = compare(i2v, diffusers_pipeline(i2v, 6.0), PROMPTS[:1], image=image())
    assert out.video.shape == (1, 5, 48, 80, 3)


def test_i2v_meanflow_matches_diffusers():
    """A MeanFlow transformer (use_meanflow: the next step's timestep as timestep_r, 0 after the last)."""
    from videosys.models.hunyuanvideo15 import tiny
    from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15Transformer3DModel

    pipe = tiny_pipeline(MODEL, preset="tiny-i2v")
    config = dataclasses.replace(tiny.transformer_config("i2v"), use_meanflow=True)
    pipe.transformer = tiny.seeded(5, lambda: HunyuanVideo15Transformer3DModel(config)).eval()
    compare(pipe, diffusers_pipeline(pipe, 1.0), PROMPTS[:1], image=image(2), guidance_scale=1.0)


def test_i2v_size_given_and_image_path(i2v, tmp_path):
    path = tmp_path / "first.png"
    image(1).save(path)
    out = i2v.generate(PROMPTS[1], image=str(path), height=32, width=32, num_inference_steps=2)
    assert out.video.shape == (1, 5, 32, 32, 3)


def test_request_checks_before_weights():
    config = tiny_config(MODEL)
    for bad, field, message in [(dict(num_frames=6), "num_frames", "4k \\+ 1"),
                                (dict(height=40), "height", "divisible by 16"),
                                (dict(image="x.png"), "image", "text-to-video")]:
        with pytest.raises(RequestError, match=message) as err:
            config.check_request(bad)
        assert err.value.field == field
    i2v = tiny_config(MODEL, preset="tiny-i2v")  # the config needs no image: each call brings one
    with pytest.raises(RequestError, match="image-to-video model") as err:
        i2v.check_request({})
    assert err.value.field == "image"
    with pytest.raises(RequestError, match="no such file"):
        i2v.check_request({"image": "/nonexistent.png"})
    with pytest.raises(RequestError, match="height"):
        tiny_config(MODEL, num_frames=9, height=20)


def test_server_refuses_before_any_weights_load():
    """The server's request model comes from generate()'s signature (image included); a bad value or an I2V
    request without an image is a 422 naming the field, from the config alone."""
    from videosys.serve.app import ApiError, generation_fields, validate_request

    i2v = tiny_config(MODEL, preset="tiny-i2v")
    assert "image" in generation_fields(i2v)
    for config, values, field in [(tiny_config(MODEL), {"num_frames": 6}, "num_frames"),
                                  (i2v, {}, "input_reference")]:
        with pytest.raises(ApiError) as err:
            validate_request(config, values)
        assert err.value.param == field


def test_published_defaults_per_checkpoint():
    from videosys.models import config_class

    hub = "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-"
    cls = config_class(MODEL)
    expect = {"480p_t2v": (480, 848, 5.0, 6.0, 50), "720p_t2v": (720, 1280, 9.0, 6.0, 50),
              "480p_i2v": (None, None, 5.0, 6.0, 50), "720p_i2v": (None, None, 7.0, 6.0, 50),
              "480p_i2v_step_distilled": (None, None, 7.0, 1.0, 12), "480p_t2v_distilled": (480, 848, 5.0, 1.0, 50)}
    for name, values in expect.items():
        c = cls(model_path=hub + name)
        assert (c.height, c.width, c.flow_shift, c.guidance_scale, c.num_inference_steps) == values, name
        assert (c.num_frames, c.fps) == (121, 24)
        assert c.task == name.split("_")[1]
    assert cls().model_path == hub + "480p_t2v"
    c = cls(model_path=hub + "720p_t2v", guidance_scale=3.0, num_inference_steps=30)  # the user's values win
    assert (c.guidance_scale, c.num_inference_steps, c.flow_shift) == (3.0, 30, 9.0)


def test_glyph_text_as_the_release():
    assert hv_text.glyph_text("no quotes") is None
    assert hv_text.glyph_text('a "cat" and “dog” and "cat"') == 'Text "cat". Text "dog". '


def test_saved_folder_loads_back(t2v, tmp_path):
    """The diffusers layout written, read back through model_path: the same video (the folder's longer default
    text lengths only add masked padding)."""
    from videosys.models import config_class

    folder = tmp_path / "hv15-tiny"
    t2v.save_pretrained(str(folder))
    assert {p.name for p in folder.iterdir()} >= {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                   "tokenizer_2", "scheduler", "model_index.json"}
    config = config_class(MODEL)(model_path=str(folder), progress_bar=False, num_frames=5, height=48, width=80,
                                 num_inference_steps=3, max_text_length=t2v.config.max_text_length,
                                 max_glyph_length=t2v.config.max_glyph_length)
    assert config.task == "t2v" and config.flow_shift is None  # the scheduler's own shift
    loaded = config.pipeline_cls.from_config(config)
    assert loaded.scheduler.config.shift == t2v.scheduler.config.shift and loaded.crop_start == t2v.crop_start
    a, b = t2v.generate(PROMPTS[0], seed=1, num_inference_steps=3), loaded.generate(PROMPTS[0], seed=1)
    torch.testing.assert_close(a.latents, b.latents)


def test_saved_i2v_folder_loads_in_diffusers(i2v, tmp_path):
    """The layout is diffusers': its I2V pipeline loads the folder (the guider, which we do not save, given)."""
    import diffusers
    from diffusers.guiders import ClassifierFreeGuidance

    i2v.save_pretrained(str(tmp_path / "i2v"))
    ref = diffusers.HunyuanVideo15ImageToVideoPipeline.from_pretrained(
        str(tmp_path / "i2v"), guider=ClassifierFreeGuidance(guidance_scale=6.0))
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder"):
        ours, theirs = getattr(i2v, name).state_dict(), getattr(ref, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_cli_generates_i2v_and_refuses_a_bad_request(tmp_path, capsys):
    from videosys.cli import main
    from videosys.utils.video import read_video

    first, output = tmp_path / "first.png", tmp_path / "i2v.mp4"
    image().save(first)
    common = ["generate", "--model", MODEL, "--preset", "tiny-i2v", "--prompt", PROMPTS[0], "--no-progress"]
    assert main([*common, "--set", f"image={first}", "--set", "num_inference_steps=2", "--output", str(output)]) == 0
    frames, fps = read_video(str(output))
    assert frames.shape == (5, 48, 80, 3) and fps == 24
    assert main([*common, "--output", str(tmp_path / "bad.mp4")]) != 0  # no image
    assert "image-to-video model" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()


def test_freeinit_runs_with_flow_matching():
    """FreeInit diffuses a flow-matching run's clean latents as rectified flow's: x_t = (1 - s) x0 + s noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from videosys.core import freeinit

    x0, noise = torch.randn(1, 4, 2, 3, 5), torch.randn(1, 4, 2, 3, 5)
    s = freeinit.FLOW_NOISE_LEVEL
    torch.testing.assert_close(freeinit.diffuse(FlowMatchEulerDiscreteScheduler(shift=5.0), x0, noise),
                               (1 - s) * x0 + s * noise)
    pipe = tiny_pipeline(MODEL, freeinit_iters=2)
    out = pipe.generate(PROMPTS[1], seed=1, num_inference_steps=3)
    assert [r["steps"] for r in out.stats["freeinit"]["runs"]] == [3, 3] and torch.isfinite(out.latents).all()


@pytest.mark.slow
def test_compiled_pipeline_equals_eager():
    """compile=True (models/modules/compile.py) through the whole pipeline: the same latents as eager."""
    run = dict(seed=1, num_inference_steps=3)
    eager = tiny_pipeline(MODEL).generate(PROMPTS[1], **run)
    compiled = tiny_pipeline(MODEL, compile=True).generate(PROMPTS[1], **run)
    scale = eager.latents.abs().max()
    torch.testing.assert_close(compiled.latents / scale, eager.latents / scale, rtol=0, atol=1e-5)
