"""The Wan family against diffusers' WanPipeline / WanImageToVideoPipeline on the same tiny components and seed.

Each tiny preset (T2V, Wan2.1 I2V with CLIP tokens, Wan2.2 A14B's two experts, TI2V-5B with and without an image)
is saved with save_pretrained; diffusers' pipeline is built from that folder's components (its own classes,
loading our files), draws its noise from a generator seeded like ours, and must give the same video within one
uint8 level and close latents. The folder loads back through WanConfig(model_path=folder) to the same video, and
an original-layout folder (config.json with model_type + the transformer's weights in the original key names)
loads the same model.
"""

import json
import os

import numpy as np
import pytest
import torch

from conftest import PROMPT, tiny_config

from videosys.core.config import RequestError

NEGATIVE = "blurry, static"
IMAGE = np.random.RandomState(0).randint(0, 256, (40, 60, 3)).astype(np.uint8)
RUN = dict(seed=3, num_inference_steps=6)
CASES = {  # id -> (preset, config fields, diffusers pipeline, with an image)
    "t2v": ("tiny", {}, "WanPipeline", False),
    "i2v": ("tiny-i2v", {}, "WanImageToVideoPipeline", True),
    "a14b": ("tiny-a14b", dict(guidance_scale_2=3.0), "WanPipeline", False),
    # Wan2.2 I2V-A14B: two experts of 36 input channels, no CLIP tokens (the tiny-a14b preset with that kind)
    "i2v-a14b": ("tiny-a14b", dict(kind="i2v-A14B", guidance_scale_2=2.5), "WanImageToVideoPipeline", True),
    "ti2v-t2v": ("tiny-ti2v", {}, "WanPipeline", False),
    "ti2v-i2v": ("tiny-ti2v", {}, "WanImageToVideoPipeline", True),
}


def wan_pipeline(preset: str, **fields):
    config = tiny_config("wan", preset=preset, **fields)
    return config.pipeline_cls.from_config(config)


def diffusers_transformer(folder: str):
    """diffusers' WanTransformer3DModel from our config.json and weights (its from_pretrained needs accelerate for
    the fp32-kept modules, not installed here)."""
    from diffusers import WanTransformer3DModel

    from videosys.utils.hub import read_state_dict

    config = {k: v for k, v in json.load(open(os.path.join(folder, "config.json"))).items() if not k.startswith("_")}
    model = WanTransformer3DModel(**config).eval()
    model.load_state_dict(read_state_dict(folder), strict=True)
    return model


def diffusers_pipeline(folder: str, cls_name: str, pipe):
    """diffusers' pipeline from our saved folder (its classes loading our files)."""
    import diffusers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

    parts = dict(tokenizer=AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer")),
                 text_encoder=UMT5EncoderModel.from_pretrained(os.path.join(folder, "text_encoder")),
                 vae=AutoencoderKLWan.from_pretrained(folder, subfolder="vae"),
                 scheduler=UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler"),
                 transformer=diffusers_transformer(os.path.join(folder, "transformer")))
    index = json.load(open(os.path.join(folder, "model_index.json")))
    if "transformer_2" in index:
        parts["transformer_2"] = diffusers_transformer(os.path.join(folder, "transformer_2"))
    if "image_encoder" in index:
        parts["image_encoder"] = CLIPVisionModel.from_pretrained(os.path.join(folder, "image_encoder"))
        parts["image_processor"] = pipe.image_processor
    return getattr(diffusers, cls_name)(**parts, boundary_ratio=index.get("boundary_ratio"),
                                         expand_timesteps=bool(index.get("expand_timesteps")))


def diffusers_run(ref, pipe, with_image: bool, output_type: str):
    from PIL import Image

    v = pipe.config
    kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=v.num_frames, height=v.height, width=v.width,
                  num_inference_steps=RUN["num_inference_steps"], guidance_scale=v.guidance_scale,
                  generator=torch.Generator("cpu").manual_seed(RUN["seed"]), output_type=output_type)
    if v.guidance_scale_2 is not None:
        kwargs["guidance_scale_2"] = v.guidance_scale_2
    if with_image:
        kwargs["image"] = Image.fromarray(IMAGE)
    return ref(**kwargs).frames


@pytest.mark.parametrize("case", list(CASES))
def test_equals_diffusers_and_loads_back(case, tmp_path, monkeypatch):
    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

    from videosys.models.wan.pipeline import WanConfig

    # diffusers' I2V module calls ftfy without checking it is installed (its T2V module checks): use the T2V one's
    monkeypatch.setattr(pipeline_wan_i2v, "prompt_clean", pipeline_wan.prompt_clean)

    preset, fields, cls_name, with_image = CASES[case]
    pipe = wan_pipeline(preset, **fields)
    image = IMAGE if with_image else None
    out = pipe.generate(PROMPT, negative_prompt=NEGATIVE, image=image, **RUN)
    folder = str(tmp_path / "wan")
    pipe.save_pretrained(folder)

    ref = diffusers_pipeline(folder, cls_name, pipe)
    video = (diffusers_run(ref, pipe, with_image, "np") * 255).round().astype(np.int16)
    diff = np.abs(video - out.video.numpy().astype(np.int16))
    assert video.shape == tuple(out.video.shape) and diff.max() <= 1, (case, diff.max())
    latents = diffusers_run(ref, pipe, with_image, "latent")
    torch.testing.assert_close(out.latents, latents.float(), atol=1e-4, rtol=1e-4)

    back = WanConfig(model_path=folder, progress_bar=False)
    assert back.kind == pipe.config.kind
    loaded = back.pipeline_cls.from_config(back)
    v = pipe.config
    again = loaded.generate(PROMPT, negative_prompt=NEGATIVE, image=image, num_frames=v.num_frames, height=v.height,
                            width=v.width, guidance_scale=v.guidance_scale, guidance_scale_2=v.guidance_scale_2,
                            **RUN)
    assert torch.equal(again.video, out.video)


def test_two_experts_switch_at_the_boundary():
    pipe = wan_pipeline("tiny-a14b", guidance_scale_2=2.0)
    calls = []
    for name, expert in zip(("high", "low"), pipe.experts):
        expert.register_forward_hook(lambda m, a, o, name=name: calls.append((name, float(a[1].reshape(-1)[0]))))
    pipe.generate(PROMPT, seed=0, num_inference_steps=8)
    boundary = 0.875 * 1000
    assert [n for n, _ in calls] == ["high" if t >= boundary else "low" for _, t in calls]
    assert {n for n, _ in calls} == {"high", "low"}


def write_original(folder, transformer, model_type: str = "t2v") -> None:
    """`transformer` in the original Wan layout: the WanModel config.json and the original key names."""
    from safetensors.torch import save_file

    from videosys.models.wan.transformer import to_original_state_dict

    folder.mkdir(parents=True)
    cfg = transformer.config
    (folder / "config.json").write_text(json.dumps({  # the original WanModel's config.json fields
        "_class_name": "WanModel", "model_type": model_type, "dim": cfg.dim, "num_heads": cfg.num_attention_heads,
        "in_dim": cfg.in_channels, "out_dim": cfg.out_channels, "text_len": 512, "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim, "num_layers": cfg.num_layers, "patch_size": [1, 2, 2],
        "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}))
    state = to_original_state_dict({k: v.contiguous() for k, v in transformer.state_dict().items()})
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("preset,name", [("tiny", "Wan2.1-T2V-1.3B"), ("tiny-a14b", "Wan2.2-T2V-A14B")])
def test_original_layout_loads_the_same_model(preset, name, tmp_path):
    """An original folder (Wan2.2 A14B: high_noise_model/ and low_noise_model/) holds the transformer(s) only."""
    from videosys.models.wan.pipeline import WanConfig

    pipe = wan_pipeline(preset)
    folder = tmp_path / "diffusers"
    pipe.save_pretrained(str(folder))
    original = tmp_path / name
    if len(pipe.experts) == 2:
        for sub, expert in zip(("high_noise_model", "low_noise_model"), pipe.experts):
            write_original(original / sub, expert)
    else:
        write_original(original, pipe.transformer)
    config = WanConfig(model_path=str(original), progress_bar=False)
    assert config.kind == pipe.config.kind and config.sp_heads() == 2
    with pytest.raises(ValueError, match="vae_path, text_encoder_path"):
        config.pipeline_cls.from_config(config)
    config = WanConfig(model_path=str(original), vae_path=str(folder), text_encoder_path=str(folder),
                       flow_shift=pipe.config.flow_shift, guidance_scale_2=pipe.config.guidance_scale_2,
                       progress_bar=False)
    loaded = config.pipeline_cls.from_config(config)
    v = pipe.config
    run = dict(num_frames=v.num_frames, height=v.height, width=v.width, guidance_scale=v.guidance_scale, **RUN)
    assert torch.equal(loaded.generate(PROMPT, **run).video, pipe.generate(PROMPT, **run).video)


def test_published_defaults_and_request_checks(tmp_path):
    from videosys.models.wan.pipeline import WanConfig

    config = WanConfig()  # Wan2.1-T2V-1.3B: no weights are loaded to build a config
    assert (config.kind, config.num_frames, config.height, config.width, config.num_inference_steps,
            config.guidance_scale, config.flow_shift, config.fps) == ("t2v-1.3B", 81, 480, 832, 50, 5.0, 3.0, 16)
    assert config.default_negative_prompt().startswith("色调艳丽")
    a14b = WanConfig(model_path="Wan-AI/Wan2.2-T2V-A14B-Diffusers")
    assert (a14b.kind, a14b.num_inference_steps, a14b.guidance_scale, a14b.guidance_scale_2, a14b.flow_shift) == \
        ("t2v-A14B", 40, 4.0, 3.0, 12.0)
    ti2v = WanConfig(model_path="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    assert (ti2v.num_frames, ti2v.height, ti2v.width, ti2v.fps) == (121, 704, 1280, 24)
    i2v = WanConfig(model_path="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers")
    assert (i2v.kind, i2v.height, i2v.flow_shift, i2v.num_inference_steps) == ("i2v-14B-720P", 720, 5.0, 40)
    with pytest.raises(RequestError, match="4k \\+ 1") as err:
        config.check_request({"num_frames": 80})
    assert err.value.field == "num_frames"
    with pytest.raises(RequestError, match="divisible by 16"):
        config.check_request({"height": 488})
    with pytest.raises(RequestError, match="divisible by 32"):
        ti2v.check_request({"height": 720})
    with pytest.raises(RequestError, match="give image=") as err:  # a call gives it (the config needs none)
        i2v.check_request({})
    assert err.value.field == "image"
    from PIL import Image

    first = str(tmp_path / "first.png")
    Image.fromarray(IMAGE).save(first)
    assert WanConfig(model_path="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", image=first).check_request(
        {"image": None})["image"] == first  # the config's image serves a request without one
    with pytest.raises(RequestError, match="does not exist"):
        i2v.check_request({"image": str(tmp_path / "missing.png")})
    with pytest.raises(RequestError, match="takes no image"):
        config.check_request({"image": IMAGE})
    with pytest.raises(RequestError, match="one transformer"):
        config.check_request({"guidance_scale_2": 2.0})
    assert i2v.check_request({"image": IMAGE})["image"] is IMAGE


@pytest.mark.slow
def test_compile_with_two_experts_equals_eager():
    """compile=True on Wan2.2 A14B's two experts (each expert's forward compiled on its own), with and without a
    stack cache: the latents of eager within fp32 rounding, the same cache decisions."""
    cache = {"method": "teacache", "threshold": 1.0, "coefficients": [1.0, 0.0]}
    runs = {}
    for compiled in (False, True):
        pipe = wan_pipeline("tiny-a14b", compile=compiled)
        for spec in (None, cache):
            pipe.set_cache(spec)
            runs[compiled, spec is None] = pipe.generate(PROMPT, **RUN)
    for uncached in (True, False):
        eager, compiled = runs[False, uncached], runs[True, uncached]
        scale = float(eager.latents.abs().max())
        assert (compiled.latents - eager.latents).abs().max() <= 1e-5 * scale
        assert compiled.stats.get("teacache") == eager.stats.get("teacache")
    assert runs[False, False].stats["teacache"]["reused_steps"] > 0
