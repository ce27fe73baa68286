"""Open-Sora 1.2 conditioning (videosys/models/open_sora/conditioning.py) against the release's rules.

Mask strategies from the release's documented examples (docs/commands.md, docs/config.md), parsed and
placed by hand; the sampler's hold / edit rule step by step on the tiny model; loop length arithmetic
and the loop's reference; prompt flags; caches and the parallel engine with conditioning; bad input
rejected before any compute.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videosys import OpenSoraConfig, OpenSoraPipeline, VideoSysEngine, read_video
from videosys.cache import PABConfig, TeaCacheConfig
from videosys.models.open_sora import conditioning as C
from videosys.models.open_sora.conditioning import MaskEntry
from videosys.models.open_sora.transformer import STDiT3, STDiT3Config
from videosys.schedulers.rectified_flow import RectifiedFlowScheduler
from videosys.utils.video import save_video

from conftest import published
from distributed import assert_same_as_single, generate_per_cache

PROMPT = "a red circle moving to the right"
# 34 frames -> 10 latent frames (two VAE chunks of 17 -> 5), 48x48 px -> 6x6 latents, a 3x3 patch grid
RUN = dict(seed=3, num_frames=34, height=48, width=48, num_inference_steps=4)


pytestmark = pytest.mark.usefixtures("one_thread_per_rank")  # conftest: one thread per spawned rank


def tiny_config(**kw):
    return OpenSoraConfig(preset="tiny", progress_bar=False, **kw)


@pytest.fixture(scope="module")
def tiny():
    return OpenSoraPipeline.from_config(tiny_config())


@pytest.fixture(scope="module")
def clip():
    """(34, 48, 48, 3) uint8 frames: a bright square moving right on a gradient, as a generated clip would be."""
    t, h, w = 34, 48, 48
    video = np.zeros((t, h, w, 3), dtype=np.uint8)
    video[..., 2] = np.linspace(0, 200, w, dtype=np.uint8)[None, None]
    for i in range(t):
        video[i, 16:32, i:i + 12, 0] = 255
    return torch.from_numpy(video)


def encoded(tiny, pixels, seed):
    """The reference latents the pipeline must hold: the VAE's posterior sample with the generation's seed."""
    return tiny.vae.encode(pixels[None], generator=torch.Generator().manual_seed(seed))[0]


def record_model_inputs(tiny, monkeypatch):
    """Every transformer call's latents (first CFG half) and x_mask."""
    calls = []
    forward = tiny.transformer.forward

    def spy(x, timestep, y, mask=None, x_mask=None, **kw):
        calls.append((x[: x.shape[0] // 2].clone(), None if x_mask is None else x_mask.clone(), float(timestep[0])))
        return forward(x, timestep, y, mask, x_mask=x_mask, **kw)

    monkeypatch.setattr(tiny.transformer, "forward", spy)
    return calls


# ---- the mask strategy ------------------------------------------------------------------------------
@pytest.mark.parametrize("text,entries", [
    ("0", [MaskEntry(0, 0, 0, 0, 1, 0.0)]),  # image condition (docs/commands.md)
    ("0,0,0,-8,8", [MaskEntry(0, 0, 0, -8, 8, 0.0)]),  # video extending
    ("0,0,0,0,16", [MaskEntry(0, 0, 0, 0, 16, 0.0)]),  # long video generation
    ("0;0,1,0,-1,1", [MaskEntry(), MaskEntry(0, 1, 0, -1, 1, 0.0)]),  # video connecting
    ("0,0,0,0,32,0.4", [MaskEntry(0, 0, 0, 0, 32, 0.4)]),  # video editing
    ("0,0,0,0,8,0.3", [MaskEntry(0, 0, 0, 0, 8, 0.3)]),  # docs/config.md
    ("0,0,0,0,1;0,0,0,-1,1", [MaskEntry(), MaskEntry(0, 0, 0, -1, 1, 0.0)]),
    (" 1, 2 ", [MaskEntry(1, 2)]), ("", []), (None, []),
])
def test_parse_documented_mask_strategies(text, entries):
    assert C.parse_mask_strategy(text) == entries
    for entry in entries:
        assert C.parse_mask_strategy(str(entry)) == [entry]


@pytest.mark.parametrize("entry,ref_frames,target_frames,align,placed", [
    # 51 frames = 15 latent frames; an image is 1 latent frame
    (MaskEntry(), 1, 15, 5, (0, 0, 1)),
    (MaskEntry(0, 1, 0, -1, 1), 1, 15, None, (0, 14, 1)),  # the last latent frame ...
    (MaskEntry(0, 1, 0, -1, 1), 1, 15, 5, (0, 10, 1)),  # ... snapped: 14 % 5 = 4 > 2.5, but 15 is no start
    (MaskEntry(0, 0, 0, -8, 8), 15, 15, None, (0, 7, 8)),
    (MaskEntry(0, 0, 0, -8, 8), 15, 15, 5, (0, 5, 8)),  # 7 % 5 = 2 rounds down
    (MaskEntry(0, 0, 0, 0, 32, 0.4), 30, 15, 5, (0, 0, 15)),  # cut to the generation
    (MaskEntry(0, 0, 0, 0, 16), 5, 30, 5, (0, 0, 5)),  # cut to the reference
    (MaskEntry(1, 1, -5, 0, 5), 15, 15, 5, (10, 0, 5)),  # a loop's entry: the previous clip's last 5
    (MaskEntry(0, 0, 3, 8, 4), 15, 15, 5, (5, 10, 4)),  # 3 -> 5 (3 > 2.5), 8 -> 10
])
def test_place_by_hand(entry, ref_frames, target_frames, align, placed):
    assert C.place(entry, ref_frames, target_frames, align) == placed


def test_find_nearest_point_by_hand():
    got = [C.find_nearest_point(v, 5, 15) for v in range(15)]
    assert got == [0, 0, 0, 5, 5, 5, 5, 5, 10, 10, 10, 10, 10, 10, 10]


@pytest.mark.parametrize("text,match", [
    ("0,a", "reference must be an integer"), ("1,2,3,4,5,6,7", "1 to 6"), ("0;", "1 to 6"), ("0,,1", "integer"),
    ("0,0,0,0,0", "length must be >= 1"), ("0,0,0,0,1,1.5", r"edit_ratio must lie in \[0, 1\]"),
    ("-1", "indices must be >= 0"), ("0,0,0,0,1,x", "edit_ratio must be a number"), (3, "is a string"),
])
def test_bad_mask_strategies(text, match):
    with pytest.raises(ValueError, match=match):
        C.parse_mask_strategy(text)


# ---- prompts ------------------------------------------------------------------------------------------
def test_prompt_json_loop_segments_and_flags():
    text, extra = C.split_prompt_json('A breathtaking sunrise scene.{"reference_path": "a.png;b.png",'
                                      '"mask_strategy": "0;0,1,0,-1,1"}')
    assert text == "A breathtaking sunrise scene." and extra == {"reference_path": "a.png;b.png",
                                                                 "mask_strategy": "0;0,1,0,-1,1"}
    assert C.references_of(extra["reference_path"]) == ["a.png", "b.png"]
    segments = C.loop_segments("|0|a jeep in a forest.|2|a jeep in the desert.|4|a jeep in a city.")
    assert segments == [(0, "a jeep in a forest."), (2, "a jeep in the desert."), (4, "a jeep in a city.")]
    assert [C.prompt_for_loop(segments, i) for i in range(6)] == ["a jeep in a forest."] * 2 + \
        ["a jeep in the desert."] * 2 + ["a jeep in a city."] * 2
    assert C.loop_segments("no loop |1| here") == [(0, "no loop |1| here")]
    assert C.append_prompt_flags("a cat", 6.5, 4.0, "pan right") == \
        "a cat aesthetic score: 6.5. motion score: 4.0. camera motion: pan right."
    assert C.append_prompt_flags("a cat aesthetic score: 5.0.", 6.5) == "a cat aesthetic score: 5.0."
    assert C.append_prompt_flags("a cat", None, None, None) == "a cat"
    for bad, match in (('a{"seed": 1}', "JSON keys"), ('a{"x"', "does not parse"), ("a{}{}", "at most one")):
        with pytest.raises(ValueError, match=match):
            C.split_prompt_json(bad)
    for bad, match in (("|0|a|0|b", "increase"), ("|0|a|x|b", "not a loop index"), ("|0|a|1", "alternate")):
        with pytest.raises(ValueError, match=match):
            C.loop_segments(bad)


def test_generate_appends_flags_per_loop_segment(tiny, monkeypatch):
    seen = []
    encode = tiny.encode_prompt
    monkeypatch.setattr(tiny, "encode_prompt", lambda p, *a: seen.append(list(p)) or encode(p, *a))
    tiny.generate("|0|a cat|1|a dog", loop=2, flow=4.0, camera_motion="pan right",
                  **{**RUN, "num_inference_steps": 1})
    suffix = " aesthetic score: 6.5. motion score: 4.0. camera motion: pan right."
    assert seen == [["a cat" + suffix], ["a dog" + suffix]]


# ---- loop arithmetic --------------------------------------------------------------------------------------
def test_loop_length_arithmetic():
    assert C.condition_video_frames(5) == 17 and C.condition_video_frames(10) == 34
    # the release's docs: loop * (num_frames - condition frames) + condition frames, in video frames
    for num_frames, loop, cfl in ((51, 1, 5), (51, 2, 5), (51, 3, 5), (102, 4, 10), (34, 2, 5)):
        frames = C.condition_video_frames(cfl)
        assert C.looped_num_frames(num_frames, loop, cfl) == loop * (num_frames - frames) + frames
    assert C.looped_num_frames(51, 2, 5) == 85 and C.looped_num_frames(102, 4, 10) == 306
    C.check_loop(1, 3, 0.0, 5)  # the condition length matters only when looping
    for args, match in (((0, 5, 0.0, 15), "loop must be"), ((2, 3, 0.0, 15), "multiple of 5"),
                        ((2, 15, 0.0, 15), "nothing new"), ((2, 5, 2.0, 15), "condition_frame_edit")):
        with pytest.raises(ValueError, match=match):
            C.check_loop(*args)


def test_loop_conditions_on_the_previous_clip_and_joins(tiny, monkeypatch):
    """loop=2 on 34 frames: the second clip starts from the encoded last 5 latent frames of the first (decoded,
    encoded again), and the video is 34 + 17 frames: the first clip, then the second's last 17."""
    calls = record_model_inputs(tiny, monkeypatch)
    decoded, encodes = [], []
    decode, encode = tiny.vae.decode, tiny.vae.encode
    monkeypatch.setattr(tiny.vae, "decode", lambda z, n: decoded.append(decode(z, n)) or decoded[-1])
    monkeypatch.setattr(tiny.vae, "encode", lambda x, **k: encodes.append((x, encode(x, **k))) or encodes[-1][1])
    run = {**RUN, "num_inference_steps": 3}
    out = tiny.generate(PROMPT, loop=2, **run)
    assert out.video.shape == (1, 34 + 17, 48, 48, 3) and out.stats["steps"] == 6
    assert len(decoded) == 2 and len(encodes) == 1 and torch.equal(encodes[0][0], decoded[0])
    held = encodes[0][1][:, :, 5:10]  # the first clip's last 5 latent frames, encoded again
    for x, x_mask, _ in calls[3:]:  # every step of the second clip
        assert torch.equal(x[:, :, :5], held)
        assert x_mask.tolist() == [[False] * 5 + [True] * 5] * 2
    assert all(x_mask is None for _, x_mask, _ in calls[:3])  # the first clip is text-to-video
    assert torch.equal(out.latents[:, :, :5], held)
    video = tiny.to_frames(torch.cat([decoded[0], decoded[1][:, :, 17:]], dim=2))
    assert torch.equal(out.video, video)
    # the first clip is the plain text-to-video generation of the same seed
    monkeypatch.undo()
    assert torch.equal(out.video[:, :34], tiny.generate(PROMPT, **run).video)


# ---- the sampler with conditioning ---------------------------------------------------------------------------
def test_conditioned_latents_equal_the_encoded_reference_after_every_step(tiny, clip, monkeypatch):
    """'0,0,0,0,2;0,0,0,-1,1': reference latent frames 0-1 at 0-1, and its frame 0 at the last latent frame,
    -1 = 9, which align 5 snaps to 5. Those frames enter every step as the encoded reference, at t = 0
    (x_mask False), and leave the last step so; the others are denoised."""
    calls = record_model_inputs(tiny, monkeypatch)
    out = tiny.generate(PROMPT, reference=clip, mask_strategy="0,0,0,0,2;0,0,0,-1,1", **RUN)
    ref = encoded(tiny, C.load_reference(clip, 48, 48), RUN["seed"])
    expected = torch.stack([ref[:, 0], ref[:, 1], ref[:, 0]], dim=1)  # (C, 3, h, w) at latent frames 0, 1, 5
    held, free = [0, 1, 5], [2, 3, 4, 6, 7, 8, 9]
    assert len(calls) == RUN["num_inference_steps"]
    for x, x_mask, _ in calls:
        assert torch.equal(x[0][:, held], expected)
        assert x_mask.tolist() == [[i not in held for i in range(10)]] * 2  # both CFG halves
    assert torch.equal(out.latents[0][:, held], expected)
    assert not torch.allclose(calls[-1][0][0][:, free], calls[0][0][0][:, free])  # the rest moved
    noise = torch.randn(1, 4, 10, 6, 6, generator=torch.Generator().manual_seed(RUN["seed"]))
    assert torch.equal(calls[0][0][0][:, free], noise[0][:, free])  # ... from the seed's noise


def test_generate_matches_the_release_masked_sampling_loop(tiny, clip):
    """RFLOW.sample with a mask written out as the release has it (x0 = z.clone(); noise where a frame's
    mask_t >= t first holds; x_mask = mask_t >= t for both CFG halves; Euler step; z = where(x_mask, z, x0)),
    from the release's apply_mask_strategy start (references written into the noise). Our only change:
    fresh noise is drawn, from the seed's generator, on the steps that use it."""
    strategy = "0,0,0,0,2;0,0,9,-1,1,0.3"  # frames 0-1 held; reference frame 9 -> 5 at latent frame 9 -> 5, edited
    out = tiny.generate(PROMPT, reference=clip, mask_strategy=strategy, guidance_scale=7.0, **RUN)
    ref = encoded(tiny, C.load_reference(clip, 48, 48), RUN["seed"])
    generator = torch.Generator().manual_seed(RUN["seed"])
    z = torch.randn(1, 4, 10, 6, 6, generator=generator)
    z[0, :, 0:2], z[0, :, 5] = ref[:, 0:2], ref[:, 5]
    mask = torch.ones(1, 10)
    mask[0, 0:2], mask[0, 5] = 0.0, 0.3
    from videosys.utils.text import encode_text

    y, text_mask = encode_text(tiny.tokenizer, tiny.text_encoder, [PROMPT + " aesthetic score: 6.5."], 300, "cpu")
    y = torch.cat([tiny.transformer.y_embedder.y_embedding[None], y])  # [uncond; cond]
    ts = [torch.tensor([t], dtype=torch.float32) for t in RectifiedFlowScheduler().timesteps(4, 48, 48, 34)]
    noise_added = mask == 1
    with torch.no_grad():
        for i, t in enumerate(ts):
            mask_t = mask * 1000
            x0 = z.clone()
            upper = mask_t >= t[:, None]
            add = upper & ~noise_added
            if add.any():
                w = t / 1000
                x_noise = (1 - w) * x0 + w * torch.randn(x0.shape, generator=generator)
                z = torch.where(add[:, None, :, None, None], x_noise, x0)
            noise_added = upper
            pred = tiny.transformer(torch.cat([z, z]), torch.cat([t, t]), y, text_mask, x_mask=upper.repeat(2, 1),
                                    fps=24, height=48, width=48)[:, :4]
            uncond, cond = pred.chunk(2)
            dt = (t - (ts[i + 1] if i < len(ts) - 1 else 0)) / 1000
            z = z + (uncond + 7.0 * (cond - uncond)) * dt
            z = torch.where(upper[:, None, :, None, None], z, x0)
    assert torch.allclose(out.latents, z, atol=1e-4)


def test_edited_frames_are_held_then_noised_once_then_denoised(tiny, clip, monkeypatch):
    """Edit ratio r: held while t > 1000 r, then noised to the step's t once, then denoised (RFLOW.sample)."""
    ts = RectifiedFlowScheduler().timesteps(4, 48, 48, 34)
    ratio = (ts[1] + ts[2]) / 2 / 1000  # active from step 2 on
    calls = record_model_inputs(tiny, monkeypatch)
    tiny.set_cache(TeaCacheConfig(threshold=1e9, coefficients=(1.0,)))  # would reuse every inner step ...
    try:
        out = tiny.generate(PROMPT, reference=clip, mask_strategy=f"0,0,0,0,5,{ratio}", **RUN)
    finally:
        tiny.set_cache(None)
    ref = encoded(tiny, C.load_reference(clip, 48, 48), RUN["seed"])[:, :5]
    masks = [x_mask[0].tolist() for _, x_mask, _ in calls]
    assert masks == [[False] * 5 + [True] * 5] * 2 + [[True] * 10] * 2
    assert torch.equal(calls[0][0][0][:, :5], ref) and torch.equal(calls[1][0][0][:, :5], ref)
    # at step 2 the frames are (1 - t/1000) ref + (t/1000) noise with fresh unit-variance noise
    w = ts[2] / 1000
    noise = (calls[2][0][0][:, :5] - (1 - w) * ref) / w
    assert 0.7 < float(noise.std()) < 1.3 and abs(float(noise.mean())) < 0.2
    assert not torch.allclose(out.latents[0][:, :5], ref, atol=1e-2)
    # ... but computes on step 2, where the edited frames' timestep jumps from 0 to t (and first / last)
    assert out.stats["teacache"]["reused_step_indices"] == [1]


def test_pab_computes_on_the_step_edited_frames_join(tiny, clip):
    """Range 2 everywhere broadcasts on steps 1 and 3; frames that join at step 1 make every module compute there."""
    ts = RectifiedFlowScheduler().timesteps(4, 48, 48, 34)
    every_other = ((0, 1001), 2)
    plans = {}
    tiny.set_cache(PABConfig.for_model(published("open-sora")["pab"], spatial=every_other, temporal=every_other,
                                       cross=every_other))
    try:
        for name, strategy in (("hold", "0,0,0,0,5"), ("edit", f"0,0,0,0,5,{(ts[0] + ts[1]) / 2 / 1000}")):
            out = tiny.generate(PROMPT, reference=clip, mask_strategy=strategy, **RUN)
            plans[name] = (dict(tiny.transformer.active_cache("pab").broadcast_plan), out.stats["pab"])
    finally:
        tiny.set_cache(None)
    depth = tiny.transformer.config.depth
    for kind in ("spatial", "temporal", "cross"):
        assert plans["hold"][0][kind] == [False, True, False, True]
        assert plans["edit"][0][kind] == [False, False, False, True]
    assert plans["hold"][1]["spatial_reused"] == 2 * depth and plans["edit"][1]["spatial_reused"] == depth


def test_teacache_indicator_uses_each_frames_timestep():
    """With x_mask the indicator's conditioning frames are modulated as at t = 0, the others as at t."""
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(hidden_size=32, depth=2, num_heads=2, caption_channels=12, model_max_length=6,
                                input_sq_size=64)).eval()
    model.enable_cache(TeaCacheConfig(threshold=0.1, coefficients=(1.0,)))
    seen = []
    skip = model.active_cache("teacache").skip
    model.active_cache("teacache").skip = lambda indicator, **kw: seen.append(indicator) or skip(indicator, **kw)
    x, y = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 6, 12)
    x_mask = torch.tensor([[False, True, True]])
    with torch.no_grad():
        for t, mask in ((700.0, x_mask), (700.0, None), (0.0, None)):
            model.cache_begin([1000.0])
            model(x, torch.tensor([t]), y, x_mask=mask, fps=24, height=64, width=64)
    mixed, at_t, at_0 = seen
    assert torch.allclose(mixed[:, 0], at_0[:, 0], atol=1e-6) and torch.allclose(mixed[:, 1:], at_t[:, 1:], atol=1e-6)
    assert not torch.allclose(at_0[:, 0], at_t[:, 0], atol=1e-3)


def test_each_prompt_of_a_batch_has_its_own_conditioning(tiny, clip, monkeypatch):
    calls = record_model_inputs(tiny, monkeypatch)
    run = {**RUN, "num_inference_steps": 2}
    out = tiny.generate([PROMPT, "a blue square"], reference=[clip, None], mask_strategy=["0,0,0,0,2", None], **run)
    ref = encoded(tiny, C.load_reference(clip, 48, 48), RUN["seed"])
    for x, x_mask, _ in calls:
        assert x_mask.tolist() == [[False] * 2 + [True] * 8, [True] * 10] * 2  # [uncond; cond], per prompt
        assert torch.equal(x[0][:, :2], ref[:, :2]) and not torch.equal(x[1][:, :2], ref[:, :2])
    assert torch.equal(out.latents[0][:, :2], ref[:, :2])


# ---- references ---------------------------------------------------------------------------------------------
def test_load_reference_resizes_and_crops_as_the_release(tmp_path):
    from PIL import Image

    # an image 4 high, 8 wide into 2x2: scale by 0.5 to 2x4 (bicubic), keep columns 1-2
    arr = np.random.default_rng(0).integers(0, 256, (4, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    got = C.load_reference(str(tmp_path / "a.png"), 2, 2)
    expected = np.asarray(Image.fromarray(arr).resize((4, 2), Image.BICUBIC))[:, 1:3]
    assert got.shape == (3, 1, 2, 2)
    assert torch.allclose(got, torch.from_numpy(expected.astype(np.float32)).permute(2, 0, 1)[:, None] / 127.5 - 1)
    # a video 6 high, 4 wide into 4x4: bilinear to 6x4 is itself (rw = 1 > rh), crop rows 1-4
    video = torch.randint(0, 256, (2, 6, 4, 3), dtype=torch.uint8)
    got = C.load_reference(video, 4, 4)
    assert torch.allclose(got, video[:, 1:5].permute(3, 0, 1, 2).float() / 127.5 - 1)
    video = torch.randint(0, 256, (3, 4, 4, 3), dtype=torch.uint8)  # 4x4 into 8x8: bilinear x2
    frames = video.permute(0, 3, 1, 2).float() / 255
    expected = F.interpolate(frames, size=(8, 8), mode="bilinear", align_corners=False) * 2 - 1
    assert torch.allclose(C.load_reference(video, 8, 8), expected.transpose(0, 1))
    pixels = torch.rand(3, 2, 8, 8) * 2 - 1  # float pixels of the right size pass through
    assert torch.equal(C.load_reference(pixels, 8, 8), pixels)
    save_video(video.repeat_interleave(4, 1).repeat_interleave(4, 2), str(tmp_path / "v.mp4"), fps=8)
    assert C.load_reference(str(tmp_path / "v.mp4"), 16, 16).shape == (3, 3, 16, 16)


def test_image_to_video_from_a_file_through_json_in_the_prompt(tiny, clip, tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(clip[0].numpy()).save(tmp_path / "first.png")
    calls = record_model_inputs(tiny, monkeypatch)
    prompt = PROMPT + '{"reference_path": "%s", "mask_strategy": "0"}' % (tmp_path / "first.png")
    out = tiny.generate(prompt, **{**RUN, "num_inference_steps": 2})
    ref = encoded(tiny, C.load_reference(str(tmp_path / "first.png"), 48, 48), RUN["seed"])
    assert ref.shape == (4, 1, 6, 6)
    assert all(torch.equal(x[0][:, :1], ref) for x, _, _ in calls) and torch.equal(out.latents[0][:, :1], ref)
    # a reference without a mask strategy is image-to-video ("0"), as the release's app
    out2 = tiny.generate(PROMPT, reference=str(tmp_path / "first.png"), **{**RUN, "num_inference_steps": 2})
    assert torch.equal(out2.latents, out.latents)


# ---- bad input: clear errors before any compute -------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(mask_strategy="0,x"), "must be an integer"),
    (dict(mask_strategy="0,1"), "names reference 1, but 1 reference"),
    (dict(mask_strategy="1"), "for loop 1, but loop=1"),
    (dict(mask_strategy="0,0,40"), "reference_start 40 is outside reference 0, which has 10 latent"),
    (dict(mask_strategy="0,0,0,12"), "target_start 12 is outside the generation's 10"),
    (dict(reference="missing.png"), "does not exist"),
    (dict(reference="clip.gif"), "unsupported file type"),
    (dict(reference=torch.zeros(4, 8, 8)), r"float reference is pixels \(3, H, W\)"),
    (dict(reference=torch.zeros(2, 8, 8, 4, dtype=torch.uint8)), "uint8 reference is frames"),
    (dict(reference=torch.zeros(2, 8, 8, 3, dtype=torch.int32)), "dtype"),
    (dict(reference=3), "file path, a PIL image or a tensor"),
    (dict(loop=2, condition_frame_length=4), "multiple of 5"),
    (dict(loop=2, condition_frame_length=10), "nothing new"),
    (dict(loop=0), "loop must be"),
    (dict(flow="fast"), "flow must be a number"),
    (dict(camera_motion=""), "camera_motion"),
    (dict(prompt=[PROMPT, PROMPT], reference=None, mask_strategy="0"), "with 2 prompts, mask_strategy must be"),
    (dict(prompt=PROMPT + '{"reference": "x.png"}'), "JSON keys"),
    (dict(prompt='{"mask_strategy": "0"}'), "empty once its JSON is removed"),
])
def test_bad_conditioning_fails_before_compute(tiny, clip, monkeypatch, kwargs, match):
    def no_compute(*a, **k):
        raise AssertionError("computed before the input was checked")

    for module in (tiny.transformer, tiny.vae, tiny.text_encoder):
        monkeypatch.setattr(module, "forward", no_compute)
    monkeypatch.setattr(tiny.vae, "encode", no_compute)
    kwargs = {"prompt": PROMPT, "reference": clip, **kwargs}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        tiny.generate(**{**RUN, **kwargs})


def test_config_yaml_and_cli(tmp_path, clip):
    from PIL import Image

    from videosys.cli import main as cli_main

    with pytest.raises(ValueError, match="must be an integer"):
        tiny_config(mask_strategy="0;a")
    with pytest.raises(ValueError, match="multiple of 5"):
        tiny_config(loop=2, condition_frame_length=3)
    config = tiny_config(reference_path="a.png;b.mp4", mask_strategy="0;0,1,0,-1,1", loop=3, flow=4.0, num_frames=34,
                         camera_motion="zoom in")
    config.to_yaml(str(tmp_path / "c.yaml"))
    assert OpenSoraConfig.from_yaml(str(tmp_path / "c.yaml")) == config
    assert (config.condition_frame_length, config.condition_frame_edit, config.align) == (5, 0.0, 5)  # the release's

    Image.fromarray(clip[0].numpy()).save(tmp_path / "first.png")
    out = tmp_path / "cli.mp4"
    rc = cli_main(["generate", "--model", "open-sora", "--preset", "tiny", "--prompt", PROMPT, "--output", str(out),
                   "--num-frames", "34", "--height", "48", "--width", "48", "--steps", "1", "--no-progress",
                   "--set", f"reference_path={tmp_path / 'first.png'}", "--set", "mask_strategy=0",
                   "--set", "loop=2"])
    assert rc == 0
    frames, fps = read_video(str(out))
    assert frames.shape == (51, 48, 48, 3) and fps == 24
    rc = cli_main(["generate", "--model", "open-sora", "--preset", "tiny", "--prompt", PROMPT, "--output",
                   str(tmp_path / "bad.mp4"), "--no-progress", "--set", "mask_strategy=0,0,0,0,0"])
    assert rc == 2 and not (tmp_path / "bad.mp4").exists()


# ---- parallel engine ------------------------------------------------------------------------------------------
COND = dict(mask_strategy="0,0,0,0,2;0,0,9,-1,1,0.3", **RUN)  # held frames, and an edited one joining at step 2
CACHES = ("none", "teacache-0.6", "pab")  # 0.6: a 4-step run with a refresh step still reuses one


@pytest.fixture(scope="module")
def single(tiny, clip):
    out = generate_per_cache(tiny, CACHES, PROMPT, reference=clip, **COND)
    tiny.set_cache(None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True)])
def test_parallel_with_conditioning_matches_single_process(single, clip, num_gpus, cfg_parallel):
    """sp=2 shards x_mask with the frames (10 latent frames, 5 per rank); cfg=2 gives each branch the same mask."""
    with VideoSysEngine(tiny_config(num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for cache, out in generate_per_cache(engine, CACHES, PROMPT, reference=clip, **COND).items():
            assert_same_as_single(out, single[cache], cache)
    assert single["teacache-0.6"].stats["teacache"]["reused_step_indices"] == [1]  # step 2 refreshes
    assert single["pab"].stats["pab"]["spatial_reused"] > 0 and single["pab"].stats["pab"]["temporal_reused"] > 0


def test_example_extends_a_clip_offline(tmp_path, monkeypatch):
    """examples/open_sora/sample.py --task extend --loop 2: a 34-frame clip continuing a generated one, then
    looped once more (34 + 17 frames), on the tiny preset."""
    import os
    import runpy
    import sys

    out = tmp_path / "extend.mp4"
    monkeypatch.setattr(sys, "argv", ["sample.py", "--task", "extend", "--loop", "2", "--steps", "1",
                                      "--output", str(out)])
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "examples", "open_sora", "sample.py"),
                   run_name="__main__")
    frames, fps = read_video(str(out))
    assert frames.shape == (34 + 17, 64, 64, 3) and fps == 24
