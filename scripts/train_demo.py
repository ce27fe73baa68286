"""Train the demo model: a small Latte on procedural clips ("a red circle moving to the right").

    python scripts/train_demo.py --output demo-latte                     # the full run (~60 min, see below)
    python scripts/train_demo.py --output demo-b --vae-from demo-latte   # stage 2 only, reusing a trained VAE
    python scripts/train_demo.py --output /tmp/toy --vae-steps 20 --steps 20 --num-frames 4 --height 32 --width 32
    python scripts/train_demo.py --output demo-latte-skip --vae-from demo-latte --init-from demo-latte \
        --skip-connections --num-layers 4 --skip-stage1-steps 300 --steps 4000 --latent-pool 2304 --lr 5e-4

The result is a standard checkpoint folder (model_index.json, transformer/, vae/, text_encoder/,
tokenizer/, scheduler/, safetensors), loaded by `LatteConfig(model_path=folder, preset="tiny")`,
so every cache and parallel path of the Latte family runs on a model whose output means something.

Decisions
- Family: Latte. Its classes are ours (videosys/models/latte), the `tiny` preset already has the
  right scale (2 layers, width 64) and the offline tokenizer knows every caption word, and it is
  the family with TeaCache and PAB defaults and the parallel tests, so the demo exercises all of it.
- Latent space with the tiny AutoencoderKL (8x down, 4 channels), not pixel space. The pipeline
  always decodes through its VAE, so a pixel-space model would need a new identity "VAE" in
  models/ and a non-standard folder; in latent space the checkpoint is the diffusers layout and
  the transformer sees 16 tokens per frame at 64x64 (8x8 latents, patch 2) instead of 1,024,
  which is what makes CPU training possible. The price: the tiny VAE is random, so it is trained
  first (stage 1, object-weighted reconstruction + a small KL term on single frames; plain shapes
  on plain backgrounds are easy to reconstruct once the small object is not drowned out by its
  background), then frozen, and its latent scale is measured and stored
  as `scaling_factor` so the diffusion sees unit-variance latents (stage 2).
- Text: the tiny T5 stays frozen at its seeded random weights; it is still a deterministic,
  injective map of the 72 captions, and the transformer's caption projection learns to read it.
  A caption is replaced by the empty negative prompt with probability `--uncond-prob`, so
  classifier-free guidance works; the empty prompt's states are cut to the caption's length and
  attended without a mask, exactly as LattePipeline.encode_prompt does at inference.
- Objective: v-prediction (`--prediction-type v_prediction`, stored in scheduler/ so the DDIM
  sampler reads it) with the DDPM forward process of Latte's schedule (1000 steps, linear betas
  1e-4..0.02); only the first half of the learned-sigma output is trained (the pipeline never
  reads the variance half). Measured: epsilon prediction (4,500 and 7,500 steps) sampled videos
  whose frames disagree (background and object change from frame to frame; 0/24 prompts right),
  because its loss hardly weighs the high-noise steps where a clip's layout is decided; with
  v-prediction the same model at 1,500 steps already keeps one background and the prompt's colour.
- The transformer stage trains on `--latent-pool` clips encoded once by the frozen VAE (every
  combination 64 times, ~8 passes at the defaults): encoding 128 frames per step cost more than
  the tiny transformer's own step (0.6 s vs 0.12 s).
- AdamW, constant learning rate after a short warm-up; everything seeded (data, init, noise,
  timesteps) and torch's deterministic algorithms on: a seed and a thread count give the same
  checkpoint. (A different number of threads may change float summation order.) One thread by
  default: on a 2-core machine with anything else running, two threads ran ~30x slower (measured
  3.6 s vs 0.12 s per transformer step), and the thread count is part of what makes a run repeatable.

The shipped checkpoint (videosys/assets/demo-latte, `LatteConfig(preset="demo")`) is, file for file,
the folder one invocation of this script at its defaults writes (its train_demo.json holds that run's
arguments and losses): `python scripts/train_demo.py --output /tmp/demo` on the idle 2-core machine
(pinned to one core) took 3,103 s = 52 min (stage 1, 500 VAE steps at 1.27 s: 11 min; encoding the
pool: 9 min; 12,000 transformer steps at 0.16 s: 32 min), and its safetensors are byte-identical to
those of the first shipped version, made in two invocations (`--vae-from` for the second). With a
second training job on the other core the same work took ~61 min (stage 1 ~20 min).
What it learned (scripts/eval_demo.py, 24 prompts, seed 0): colour 20/24, direction 22/24, both 20/24.
What got there, measured on the same stage 1:
- epsilon prediction, lr 5e-4, uniform timesteps: frames disagree (background and object change
  from frame to frame) at 4,500 and 7,500 steps;
- v-prediction, lr 5e-4, uniform timesteps, 12,000 steps: colour 24/24 but direction 6/24 (chance):
  the objects keep still, the direction word changed the output ~20x less than the colour word
  (a clip's layout and motion are decided at high noise, where the noisy input shows nothing);
- continuing that checkpoint 10,000 steps with timesteps drawn towards high noise: direction 15/24;
- v-prediction, lr 1e-3, `--timestep-power 0.5` (timestep T * u**0.5: half the steps above t = 707,
  instead of 30%), 12,000 steps from scratch: the defaults, above. Direction appears after ~4,000 steps.

Skip-DiT (arXiv 2411.17616): `--skip-connections` gives the transformer long skip branches (unit i to
unit L-1-i, videosys/models/latte/transformer.py); the authors fine-tune them onto a trained Latte in two
stages (train_skip_dit.py: `freeze: True`, only skip_linears / skip_norms trained, then the whole model),
here `--skip-stage1-steps` steps of the branches alone, then `--steps` of everything. With `--init-from`
a plain Latte of fewer units (the 2-unit demo), its units are copied to the same relative depth (4 units:
0, 0, 1, 1), so Skip-Cache has middle units to skip. The shipped `LatteConfig(preset="demo-skip")`
(videosys/assets/demo-latte-skip) is the folder the command above writes (its train_demo.json: arguments,
losses, timings): the demo's VAE, 300 steps of the branches alone, 4,000 of everything at lr 5e-4 on a pool
of 2,304 clips (32 per caption). Measured with snapshots of a 6,000-step run (`--snapshot-every 1000`; a
snapshot at step N is the N-step run's model: constant lr, the data order does not depend on --steps):
prompt accuracy (scripts/eval_demo.py, 24 prompts, seed 0) 16, 17, 19, 22, 20, 19 / 24 after 1,000 .. 6,000
steps; over 3 seeds step 4,000 has 66/72, step 6,000 54/72 (the demo: 58/72), although the validation loss
still falls (6,000: 0.296; the demo: 0.323). 900 steps on a 512-clip pool (the first try) reached 14/24.

The demo Wan (`--family wan`, shipped in videosys/assets/demo-wan, `WanConfig(preset="demo")`): the same data, loop,
seeding and output layout, with Wan's parts. The folder is a diffusers WanPipeline folder
(`diffusers.WanPipeline.from_pretrained(folder)` loads it; tests/test_demo_wan.py compares its video with ours).
- Transformer: our WanTransformer3DModel (diffusers' layout), 4 blocks of width 64 (4 heads of 16), ffn 256, full
  3D attention with 3D RoPE over 5 x 4 x 4 = 80 tokens (17 frames, 64x64, patch 1x2x2).
- Objective: flow matching as Wan trains it and diffusers' UniPC flow_prediction samples it: x_s = (1 - s) x0 +
  s noise, target noise - x0, timestep 1000 s, s drawn through the scheduler's flow shift 3.0 (Wan2.1-1.3B's,
  stored in scheduler/): k u / (1 + (k - 1) u) for uniform u, 55% of the steps above s = 0.7 where layout and
  motion are decided (Latte needed --timestep-power 0.5 for the same reason; here 1.0 by default).
- VAE: diffusers' AutoencoderKLWan, Wan2.1's layout (causal 3D convolutions, 8x spatial and 4x temporal down,
  16 latent channels) at base width 16 (dims 16, 32, 32, 32; 0.8 M parameters), trained in stage 1 like Latte's
  but on clips (its first frame is encoded alone, each next four into one latent frame; phases below). Measured on
  one idle core: a step of 4 5-frame clips 1.0 s at width 16, 0.8 s at width 8; encoding 16 clips of 17 frames 1.9 s. A 3D causal VAE at this width is fast enough to train, so no
  compromise on the architecture. Latte's VAE settings (lr 1e-3, no clipping) did not carry over: with 4-clip
  batches the loss spiked back up (32x32 probe: 0.04 at step 130, 0.33 at 150; the 64x64 run sat at 0.60 from
  step 100 to 150), so Wan's stage 1 clips the gradient norm at 1 and uses a lower lr (2e-4, below). Its
  `latents_mean` (per channel) and `latents_std` (one value for all channels) are measured after stage 1 and
  written to vae/config.json: Wan's pipelines decode latents * std + mean.
- Text: the tiny Wan preset's UMT5 encoder (frozen, seeded) and offline tokenizer, 512 states with the padding
  zeroed as WanPipeline encodes them; the uncond prompt is the empty one (the demo preset's negative prompt).
- Stage 1 in three phases, each a fresh AdamW at lr 2e-4 with the data continuing (--vae-steps, then --vae-more):
  3,000 + 3,000 steps on 5-frame clips (batch 4), then 800 on 17-frame clips (batch 2). Why, measured:
  - Every nonlinearity of AutoencoderKLWan follows an RMS norm over channels, which keeps only a position's
    direction; a plain background's level reaches the first conv as level x response + a bias ~0.2 of it, so at
    first little more than its sign survives. Training finds a two-frame answer first (every clip decodes to a
    dark or a light frame, flat grey levels below / above 0 share a latent) and leaves it slowly: a 32x32 probe sat
    there 1,000 steps. Tried within 75-400 steps, all binary or constant: lr 2e-5 .. 2e-3, Adam or SGD, clipping on
    or off, KL 0, sample or mean, object weight 0 or 10, batch 4-16, 1- or 5-frame clips, z_dim 4, base width 32,
    Wan2.2's residual blocks, zero-initialised branches, rescaled / frozen first convs, conv biases zeroed or frozen,
    latents x10, encoder lr x10 or frozen, a batch-centred loss, smooth colour fields, a constant fourth channel,
    input noise, every RMS norm put in its near-linear regime at init. Hence the posterior mean (--vae-latent
    mode: its std stays ~1 while the means are ~0.5), a clipped gradient (Latte's lr 1e-3 unclipped spiked back to
    the start) and lr 2e-4 (6e-4 from the 3,000-step VAE: MSE 0.078 after 100 steps against 0.026 at 2e-4).
    Training MSE 0.10 at step 300, 0.019 at 3,000, ~0.013 at 6,000 (one core, 0.85 s/step).
  - 5-frame clips train the first frame and one 4-frame group; a 17-frame clip's later groups go through the causal
    convolutions' cache of the group before, which they never train. After 6,000 steps the tracker read 16/16 of
    5-frame reconstructions, 15/16 of 9-frame ones, 8/16 of 17-frame ones: the per-frame L1 error grew from ~5
    (frames 0-4) to 30-160 of 255 (frames 8-16, backgrounds drifting, 20 -> 103). The third phase trains that
    path on whole 17-frame clips.

Prints the losses as it goes and writes <output>/train_demo.json (arguments, losses, the
held-out validation losses before and after each stage, seconds per step).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import torch

from videosys.eval import demo as eval_demo  # the tracker scores the VAE's reconstructions
from videosys.models.latte.pipeline import LatteConfig, LattePipeline, tiny_components
from videosys.utils.demo_data import DemoClips
from videosys.utils.files import write_json

VALIDATION_SEED = 10_000  # validation clips come from a dataset seed training never uses


def build_pipeline(seed: int, prediction_type: str = "epsilon", num_layers: int = 2,
                   skip_connections: bool = False) -> LattePipeline:
    """The `tiny` preset's components (with `num_layers` spatial + temporal block pairs, Skip-DiT skip branches
    if asked), initialised from `seed`; the scheduler says what the model predicts."""
    from diffusers import DDIMScheduler

    config = LatteConfig(preset="tiny", progress_bar=False)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=config.beta_start, beta_end=config.beta_end,
                              beta_schedule=config.beta_schedule, clip_sample=False, prediction_type=prediction_type)
    transformer, *rest = tiny_components(seed)
    if num_layers != transformer.config.num_layers or skip_connections:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = type(transformer)(dataclasses.replace(transformer.config, num_layers=num_layers,
                                                                skip_connections=skip_connections)).eval()
    return LattePipeline.assemble(config, transformer, *rest, scheduler)


# ---- the Wan family (--family wan): a small WanTransformer3DModel, a small AutoencoderKLWan, the tiny UMT5 stack ----
WAN_KIND = "t2v-1.3B"  # the tiny preset's kind: one transformer, the 16-channel 4x8x8 VAE
WAN_FLOW_SHIFT = 3.0  # that release's published shift (checkpoints.py), stored in scheduler/ and used in training


def build_wan_pipeline(args):
    """The tiny Wan preset's text stack (UMT5 encoder + offline tokenizer) with a transformer and VAE of this
    script's sizes, initialised from `args.seed`; UniPC flow matching with Wan's shift."""
    from diffusers import AutoencoderKLWan

    from videosys.models.wan import components
    from videosys.models.wan.pipeline import WanConfig, WanPipeline
    from videosys.models.wan.transformer import WanTransformer3DModel, WanTransformerConfig

    config = WanConfig(preset="tiny", progress_bar=False, flow_shift=WAN_FLOW_SHIFT)
    parts = components.tiny_components(WAN_KIND, args.seed)
    heads = args.width_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        transformer = WanTransformer3DModel(WanTransformerConfig(
            num_attention_heads=heads, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=components.TEXT_DIM, freq_dim=64, ffn_dim=4 * heads * 16, num_layers=args.num_layers,
            rope_max_seq_len=64)).eval()
        # Wan2.1's VAE layout (causal 3D convs, 8x spatial and 4x temporal down, 16 latent channels) at a width
        # one core trains in minutes; latents_mean / latents_std are measured after stage 1
        vae = AutoencoderKLWan(base_dim=args.vae_base_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, True], z_dim=16).eval()
    return WanPipeline.assemble(config, transformer, vae, parts["text_encoder"], parts["tokenizer"],
                                components.scheduler(WAN_FLOW_SHIFT))


def is_wan(pipeline) -> bool:
    return type(pipeline).__name__ == "WanPipeline"


def to_video(clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float in [-1, 1] (the Wan VAE's input)."""
    return torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3).contiguous()


def to_pixels(clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B*T, 3, H, W) float in [-1, 1]."""
    x = torch.from_numpy(clips).float().div(127.5).sub(1)
    return x.reshape(-1, *x.shape[2:]).permute(0, 3, 1, 2).contiguous()


def lr_at(step: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (step + 1) / max(warmup, 1))


# ---- stage 1: the VAE -------------------------------------------------------------------


def object_weights(frames: torch.Tensor, object_weight: float) -> torch.Tensor:
    """(N, 1, H, W): 1 on the background, 1 + object_weight on the object. The object covers ~5% of
    a frame; unweighted, a short run learns the backgrounds and washes the object out to grey
    (measured: 300 steps, val MSE 0.03, tracker 4% on the reconstructions). The background is
    plain and the object never touches the border, so a pixel unlike the corner is the object's."""
    corner = frames[..., :1, :1]  # (N, 3, H, W) frames or (B, 3, T, H, W) clips
    return 1 + object_weight * ((frames - corner).abs().amax(dim=1, keepdim=True) > 1e-3).float()


def vae_loss(vae, frames: torch.Tensor, generator: torch.Generator, kl_weight: float,
             object_weight: float, sample: bool = True) -> tuple[torch.Tensor, float]:
    """Object-weighted reconstruction MSE of sampled latents (or the posterior means: `sample` False) +
    kl_weight * KL per latent element; also returns the plain MSE."""
    posterior = vae.encode(frames).latent_dist
    recon = vae.decode(posterior.sample(generator) if sample else posterior.mode()).sample
    weights = object_weights(frames, object_weight)
    weighted = ((recon - frames) ** 2 * weights).mean() / weights.mean()
    if posterior.mean.ndim == 4:
        kl = posterior.kl().mean() / posterior.mean[0].numel()
    else:  # diffusers' kl() sums dims 1-3 only: per element by hand for 5D (Wan) latents
        kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
    return weighted + kl_weight * kl, torch.nn.functional.mse_loss(recon, frames).item()


@torch.no_grad()
def vae_validation(vae, frames: torch.Tensor) -> float:
    """Reconstruction MSE of the posterior mean on fixed frames."""
    return float(torch.nn.functional.mse_loss(vae.decode(vae.encode(frames).latent_dist.mode()).sample, frames))


def validation_frames(pipeline, args, frames: int | None = None) -> torch.Tensor:
    frames, pixels = (frames or args.vae_frames, to_video) if is_wan(pipeline) else (1, to_pixels)
    return pixels(DemoClips(frames, args.height, args.width, VALIDATION_SEED).batch(0, args.val_size)[0])


def train_vae(pipeline, args, log, first_step: int = 0, phase: tuple[int, int, int] | None = None) -> dict:
    """Latte's 2D VAE on single frames; Wan's causal 3D VAE on clips (its first frame is encoded alone, each next
    four as one latent frame, later groups through the causal convolutions' cache of the group before). One phase
    of (steps, frames per clip, clips per batch), default (--vae-steps, --vae-frames, --vae-batch), at --vae-lr with
    a fresh AdamW (warmed up), on the data from batch `first_step` on: a later phase continues the data."""
    steps, frames, batch = phase or (args.vae_steps, args.vae_frames, args.vae_batch)
    lr = args.vae_lr
    vae = pipeline.vae.train().requires_grad_(True)  # a second phase: the first left it frozen
    frames, pixels = (frames, to_video) if is_wan(pipeline) else (1, to_pixels)
    data = DemoClips(num_frames=frames, height=args.height, width=args.width, seed=args.seed)
    val = validation_frames(pipeline, args, frames)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed + 1 + first_step)
    before = vae_validation(vae, val)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, args.warmup)
        loss, mse = vae_loss(vae, pixels(data.batch(first_step + step, batch)[0]), generator,
                             args.kl_weight, args.object_weight, args.vae_latent == "sample")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.vae_clip:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), args.vae_clip)
        optimizer.step()
        losses.append(mse)
        if step % args.log_every == 0 or step == steps - 1:
            log(f"vae step {first_step + step:5d}  mse {mse:.5f}")
    seconds = time.perf_counter() - start
    vae.eval().requires_grad_(False)
    return {"val_mse_before": before, "val_mse_after": vae_validation(vae, val), "losses": losses,
            "s_per_step": seconds / max(steps, 1)}


def load_vae(pipeline, folder: str) -> dict:
    """A checkpoint folder's vae/ weights into the VAE built above (same tiny architecture; a different one fails
    loudly here), so the written config is the one a single run writes; returns that folder's vae config."""
    from safetensors.torch import load_file

    folder = os.path.join(folder, "vae")
    pipeline.vae.load_state_dict(load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")))
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def stage1(pipeline, args, log) -> dict:
    """The VAE's phases: (--vae-steps, --vae-frames, --vae-batch), then each of --vae-more, each with a fresh
    optimizer on the data that follows. --vae-resume skips the first --vae-resume-phases of them (that snapshot's
    VAE is their result); with --snapshot-every, each phase's VAE is saved for such a resume."""
    phases = [(args.vae_steps, args.vae_frames, args.vae_batch), *args.vae_more]
    report, first_step = {"phases": []}, 0
    if args.vae_resume:
        load_vae(pipeline, args.vae_resume)
        report["resumed_from"] = args.vae_resume
        first_step = sum(p[0] for p in phases[:args.vae_resume_phases])
        phases = phases[args.vae_resume_phases:]
    for i, phase in enumerate(phases):
        done = train_vae(pipeline, args, log, first_step, phase)
        report["phases"].append({"steps_frames_batch": list(phase), **done})
        first_step += phase[0]
        if args.snapshot_every and i < len(phases) - 1:
            pipeline.save_pretrained(os.path.join(args.output + "-snapshots", f"vae-step-{first_step}"))
    if report["phases"]:
        report.update(val_mse_before=report["phases"][0]["val_mse_before"],
                      val_mse_after=report["phases"][-1]["val_mse_after"], s_per_step=report["phases"][-1]["s_per_step"],
                      losses=[x for p in report["phases"] for x in p["losses"]])  # every phase's, in order
    return report


# ---- stage 2: the transformer -------------------------------------------------------------


@torch.no_grad()
def encode_latents(vae, clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, C, T, h, w) unscaled posterior means (Wan: T' = (T - 1) / 4 + 1)."""
    if vae.config.get("z_dim") is not None:  # AutoencoderKLWan: whole clips
        return vae.encode(to_video(clips)).latent_dist.mode()
    b, t = clips.shape[:2]
    z = vae.encode(to_pixels(clips)).latent_dist.mode()  # (B*T, C, h, w)
    return z.view(b, t, *z.shape[1:]).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def reconstruction_accuracy(vae, args) -> dict:
    """The tracker's accuracy on held-out clips passed through the VAE: the ceiling of the whole model,
    known before the long transformer stage starts."""
    data = DemoClips(args.num_frames, args.height, args.width, VALIDATION_SEED)
    rows = []
    for i in range(args.val_size):
        clip, text, _ = data.item(i)
        if vae.config.get("z_dim") is not None:  # Wan: (1, 3, T, H, W) -> (T, 3, H, W)
            recon = vae.decode(encode_latents(vae, clip[None])).sample[0].transpose(0, 1)
        else:
            recon = vae.decode(vae.encode(to_pixels(clip[None])).latent_dist.mode()).sample  # (T, 3, H, W)
        frames = ((recon.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        rows.append(eval_demo.row(text, text, frames))
    return eval_demo.score(rows)


@torch.no_grad()
def latent_stats(vae, args) -> dict:
    """The VAE config entries that make the latents of a fixed sample of clips unit variance: Latte's
    `scaling_factor` (1 / std), or Wan's per-channel `latents_mean` and `latents_std` (one std for all channels:
    a channel the KL term left nearly empty is not blown up to unit variance)."""
    clips = DemoClips(args.num_frames, args.height, args.width, args.seed + 2).batch(0, args.val_size)[0]
    z = encode_latents(vae, clips)
    if vae.config.get("z_dim") is None:
        return {"scaling_factor": float(1.0 / z.std())}
    mean = z.mean(dim=(0, 2, 3, 4))
    std = float((z - mean.view(1, -1, 1, 1, 1)).std())
    return {"latents_mean": mean.tolist(), "latents_std": [std] * len(mean)}


def normalise(vae, z: torch.Tensor) -> torch.Tensor:
    """Encoded latents as the diffusion sees them: Latte's z * scaling_factor; Wan's (z - mean) / std
    (its pipelines decode latents * std + mean)."""
    if vae.config.get("z_dim") is None:
        return z * vae.config.scaling_factor
    from videosys.models.wan.pipeline import latents_stats

    mean, std = latents_stats(vae, z)
    return (z - mean) / std


@torch.no_grad()
def text_states(pipeline, captions: list[str], drop: torch.Tensor):
    """Text states and mask for training, laid out as at inference: a caption's tokens (padding masked),
    or where `drop` is set, the empty prompt's states cut to that caption's length and all attended.
    Wan: no mask (its pipelines zero the padding of the 512 states), the empty prompt's own states."""
    if is_wan(pipeline):
        return wan_text_states(pipeline, captions, drop), None
    text, mask = pipeline.encode_prompt(captions, "", do_cfg=True)  # [uncond; cond], (2B, L, C)
    b = len(captions)
    uncond, cond = text[:b], text[b:]
    cond_mask = mask[b:] if mask is not None else torch.ones(cond.shape[:2], dtype=torch.long)
    states = torch.where(drop[:, None, None], uncond, cond)
    return states, cond_mask  # the uncond rows keep their caption's length and its mask


@torch.no_grad()
def wan_text_states(pipeline, captions: list[str], drop: torch.Tensor) -> torch.Tensor:
    """(B, 512, C) UMT5 states, encoded once per caption (the encoder is frozen; 512 tokens per caption per step
    cost more than the transformer's step) and kept on the pipeline."""
    cache = pipeline.__dict__.setdefault("_train_caption_states", {})
    missing = sorted({c for c in [*captions, ""] if c not in cache})
    if missing:
        cache.update(zip(missing, pipeline.encode_prompt(missing, "", do_cfg=False)))
    return torch.stack([cache["" if d else c] for c, d in zip(captions, drop.tolist())])


def flow_loss(pipeline, latents: torch.Tensor, states, generator: torch.Generator,
              timesteps: torch.Tensor | None, timestep_power: float) -> torch.Tensor:
    """Wan's flow matching: x_s = (1 - s) x0 + s noise, the model at timestep 1000 s predicts noise - x0 (what
    UniPC's flow_prediction integrates). Random s = shift(u ** timestep_power), the scheduler's flow shift
    shift(s) = k s / (1 + (k - 1) s) that its sampling sigmas follow (k = 3 puts 55% of the steps above 0.7)."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator)
    if timesteps is None:
        k = pipeline.scheduler.config.flow_shift
        u = torch.rand(b, generator=generator) ** timestep_power
        sigmas = k * u / (1 + (k - 1) * u)
    else:
        sigmas = timesteps.float() / pipeline.scheduler.config.num_train_timesteps
    s = sigmas.view(b, 1, 1, 1, 1)
    pred = pipeline.transformer((1 - s) * latents + s * noise, sigmas * pipeline.scheduler.config.num_train_timesteps,
                                states)
    return torch.nn.functional.mse_loss(pred, noise - latents)


def denoise_loss(pipeline, latents: torch.Tensor, states, mask, generator: torch.Generator,
                 timesteps: torch.Tensor | None = None, timestep_power: float = 1.0) -> torch.Tensor:
    """Epsilon- or v-prediction MSE at random (or given) timesteps of the DDPM forward process; random
    timesteps are T * u ** timestep_power (u uniform: 1 is uniform, below 1 favours high noise).
    Wan: flow matching (flow_loss)."""
    if is_wan(pipeline):
        return flow_loss(pipeline, latents, states, generator, timesteps, timestep_power)
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator)
    if timesteps is None:
        total = pipeline.scheduler.config.num_train_timesteps
        u = torch.rand(b, generator=generator)
        timesteps = (total * u**timestep_power).long().clamp(max=total - 1)
    noisy = pipeline.scheduler.add_noise(latents, noise, timesteps)
    channels = pipeline.transformer.config.in_channels
    pred = pipeline.transformer(noisy, timesteps, states, mask)[:, :channels]  # the non-variance half
    if pipeline.scheduler.config.prediction_type == "v_prediction":
        return torch.nn.functional.mse_loss(pred, pipeline.scheduler.get_velocity(latents, noise, timesteps))
    return torch.nn.functional.mse_loss(pred, noise)


def validation_batch(pipeline, args):
    """Fixed clips, captions, noise and timesteps (spread over the schedule) for a comparable loss."""
    clips, captions = DemoClips(args.num_frames, args.height, args.width, VALIDATION_SEED).batch(0, args.val_size)
    latents = normalise(pipeline.vae, encode_latents(pipeline.vae, clips))
    states, mask = text_states(pipeline, captions, torch.zeros(len(captions), dtype=torch.bool))
    timesteps = torch.linspace(0, pipeline.scheduler.config.num_train_timesteps - 1, len(captions)).long()
    return latents, states, mask, timesteps


@torch.no_grad()
def transformer_validation(pipeline, batch) -> float:
    latents, states, mask, timesteps = batch
    return float(denoise_loss(pipeline, latents, states, mask, torch.Generator().manual_seed(VALIDATION_SEED),
                              timesteps))


@torch.no_grad()
def latent_pool(vae, args, log) -> tuple[torch.Tensor, list[str]]:
    """The first `--latent-pool` training clips (every combination equally often), encoded once by the
    frozen VAE: (N, C, T, h, w) scaled latents and their captions. Encoding is most of a step's cost
    when done per step (a tiny transformer, 128 frames through the VAE encoder)."""
    data = DemoClips(num_frames=args.num_frames, height=args.height, width=args.width, seed=args.seed)
    latents, captions, start = [], [], time.perf_counter()
    chunk = 16
    for first in range(0, args.latent_pool, chunk):
        clips, texts = zip(*(data.item(i)[:2] for i in range(first, min(first + chunk, args.latent_pool))))
        latents.append(normalise(vae, encode_latents(vae, np.stack(clips))))
        captions.extend(texts)
    log(f"encoded {args.latent_pool} clips in {time.perf_counter() - start:.0f} s")
    return torch.cat(latents), captions


def skip_parameters(transformer) -> list:
    """The Skip-DiT branches' parameters (skip_norms, skip_linears): stage 1 of the authors' recipe trains
    only these (train_skip_dit.py --freeze: every name without skip_linear / skip_norm frozen)."""
    return [p for name, p in transformer.named_parameters() if name.startswith(("skip_norms.", "skip_linears."))]


def train_transformer(pipeline, args, log) -> dict:
    """The transformer stage; with `--skip-stage1-steps`, Skip-DiT's two stages: the skip branches alone (the
    rest frozen), then everything for `--steps`. One generator and one shuffled order run through both."""
    transformer = pipeline.transformer.train()
    pool, pool_captions = latent_pool(pipeline.vae, args, log)
    val = validation_batch(pipeline, args)
    generator = torch.Generator().manual_seed(args.seed + 3)
    before = transformer_validation(pipeline, val)
    stages = [("skip branches", skip_parameters(transformer), args.skip_stage1_steps)] if args.skip_stage1_steps else []
    stages.append(("all", list(transformer.parameters()), args.steps))
    order, report = torch.empty(0, dtype=torch.long), {"val_loss_before": before}
    for name, params, steps in stages:
        trainable = {id(p) for p in params}
        for p in transformer.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        losses, start = [], time.perf_counter()
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, args.lr, args.warmup)
            if len(order) < args.batch_size:  # a new shuffled pass over the pool
                order = torch.cat([order, torch.randperm(len(pool), generator=generator)])
            picked, order = order[: args.batch_size], order[args.batch_size:]
            latents, captions = pool[picked], [pool_captions[i] for i in picked.tolist()]
            drop = torch.rand(len(captions), generator=generator) < args.uncond_prob
            states, mask = text_states(pipeline, captions, drop)
            loss = denoise_loss(pipeline, latents, states, mask, generator, timestep_power=args.timestep_power)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            if step % args.log_every == 0 or step == steps - 1:
                recent = losses[-args.log_every:]
                log(f"transformer ({name}) step {step:5d}  loss {sum(recent) / len(recent):.4f}")
            if args.snapshot_every and (step + 1) % args.snapshot_every == 0 and step + 1 < steps:
                tag = "step" if name == "all" else "skip-step"
                folder = os.path.join(args.output + "-snapshots", f"{tag}-{step + 1}")
                pipeline.save_pretrained(folder)  # for scripts/eval_demo.py while training goes on
                log(f"snapshot {folder}")
        stage = {"losses": losses, "s_per_step": (time.perf_counter() - start) / max(steps, 1),
                 "val_loss_after": transformer_validation(pipeline, val)}
        if name == "all":
            report.update(stage)
        else:
            report["skip_stage"] = {**stage, "steps": steps, "parameters": sum(p.numel() for p in params)}
    for p in transformer.parameters():
        p.requires_grad_(True)
    transformer.eval()
    return report


def grown_state(trained: dict, num_layers: int, trained_layers: int) -> dict:
    """A trained Latte's weights for a deeper (or equal) stack: unit i copies the trained unit at the same
    relative depth, round(i * (n - 1) / (L - 1)), so the first and last units are the trained first and last;
    everything else (the skip branches) keeps its init."""
    out = {}
    for key, value in trained.items():
        head, _, rest = key.partition(".")
        if head in ("transformer_blocks", "temporal_transformer_blocks"):
            continue
        out[key] = value
    for i in range(num_layers):
        src = round(i * (trained_layers - 1) / max(num_layers - 1, 1))
        for head in ("transformer_blocks", "temporal_transformer_blocks"):
            prefix = f"{head}.{src}."
            out.update({f"{head}.{i}.{k[len(prefix):]}": v for k, v in trained.items() if k.startswith(prefix)})
    return out


def train(args, log=print) -> tuple[LattePipeline, dict]:
    """Both stages; the process's RNG, thread count and determinism flag are restored afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            return _train(args, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(args, log) -> tuple[LattePipeline, dict]:
    if args.family == "wan":
        pipeline = build_wan_pipeline(args)
    else:
        pipeline = build_pipeline(args.seed, args.prediction_type, args.num_layers, args.skip_connections)
    pipeline.text_encoder.requires_grad_(False)
    start = time.perf_counter()
    if args.vae_from:  # stage 1 done before: its VAE weights (and its latent statistics) from a checkpoint folder
        written = load_vae(pipeline, args.vae_from)
        pipeline.vae.eval().requires_grad_(False)
        vae = {"from": args.vae_from}
        stats = {k: written[k] for k in ("scaling_factor", "latents_mean", "latents_std") if k in written}
        if args.family == "latte":
            stats = {"scaling_factor": stats["scaling_factor"]}
    else:
        vae = stage1(pipeline, args, log)
        vae["tracker_accuracy"] = reconstruction_accuracy(pipeline.vae, args)
        log(f"tracker on VAE reconstructions: {vae['tracker_accuracy']}")
        stats = latent_stats(pipeline.vae, args)
    pipeline.vae.register_to_config(**stats)  # the pipeline undoes it before decoding
    if args.snapshot_every and not args.vae_from:  # stage 1's VAE for --vae-from, should stage 2 be cut short
        pipeline.save_pretrained(os.path.join(args.output + "-snapshots", "stage1-done"))
    if args.init_from and args.family == "wan":
        pipeline.transformer.load_state_dict(type(pipeline.transformer).from_pretrained(
            args.init_from, "transformer").state_dict())
    elif args.init_from:  # continue from a trained transformer (same architecture) instead of the seeded init
        from videosys.models.latte.transformer import LatteTransformer3DModel

        trained = LatteTransformer3DModel.from_pretrained(args.init_from, "transformer")
        if args.skip_connections and not trained.config.skip_connections:  # Skip-DiT from a plain Latte
            state = grown_state(trained.state_dict(), args.num_layers, trained.config.num_layers)
            missing, unexpected = pipeline.transformer.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith(("skip_norms.", "skip_linears.")) for k in missing):
                raise ValueError(f"--init-from {args.init_from}: cannot grow it into this model "
                                 f"(missing {missing}, unexpected {unexpected})")
        else:
            pipeline.transformer.load_state_dict(trained.state_dict())
    log("latent " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v[0]:.4f}.."
                              for k, v in stats.items()))
    transformer = train_transformer(pipeline, args, log)
    report = {"args": vars(args), "vae": vae, **stats, "transformer": transformer,
              "total_s": time.perf_counter() - start}
    return pipeline, report


# the options whose default depends on --family (None on the command line: this table's)
FAMILY_DEFAULTS = {
    "latte": dict(num_frames=16, vae_steps=500, vae_more=[], vae_batch=32, vae_lr=1e-3, vae_clip=0.0, vae_latent="sample",
                  num_layers=2, timestep_power=0.5, steps=12000, latent_pool=4608),
    "wan": dict(num_frames=17, vae_steps=3000, vae_more=[(3000, 5, 4), (800, 17, 2)], vae_batch=4, vae_lr=2e-4, vae_clip=1.0, vae_latent="mode",
                num_layers=4, timestep_power=0.5, steps=8000, latent_pool=1152),
}


def phase_arg(text: str) -> tuple[int, int, int]:
    """"3000:5:4" -> (3000 steps, 5-frame clips, 4 clips a batch)."""
    try:
        steps, frames, batch = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a phase is STEPS:FRAMES:BATCH, e.g. 800:17:2") from None
    if steps < 0 or frames < 1 or batch < 1 or (frames - 1) % 4:
        raise argparse.ArgumentTypeError(f"{text!r}: steps >= 0, batch >= 1, frames 4k + 1")
    return steps, frames, batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="checkpoint folder to write")
    parser.add_argument("--family", choices=tuple(FAMILY_DEFAULTS), default="latte",
                        help="latte: the Latte demo; wan: a small Wan (flow matching, UniPC, full 3D attention)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: a busy 2-core machine slows 2 threads 30x, measured)")
    parser.add_argument("--num-frames", type=int, default=None, help="latte 16; wan 17 (4k + 1: 5 latent frames)")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--vae-steps", type=int, default=None, help="latte 500, wan 3000")
    parser.add_argument("--vae-batch", type=int, default=None,
                        help="per VAE step: latte, 32 frames; wan, 4 clips of --vae-frames")
    parser.add_argument("--vae-frames", type=int, default=5, help="wan: frames per VAE training clip (4k + 1)")
    parser.add_argument("--vae-base-dim", type=int, default=16, help="wan: the VAE's base width")
    parser.add_argument("--width-heads", type=int, default=4, help="wan: attention heads of 16 (model width 16 x this)")
    parser.add_argument("--vae-lr", type=float, default=None, help="latte 1e-3; wan 2e-4")
    parser.add_argument("--vae-clip", type=float, default=None,
                        help="VAE gradient-norm clip, 0 for none (latte none; wan 1.0: at 1e-3 unclipped, 4-clip "
                             "batches spiked the loss back to the start)")
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--vae-latent", choices=("sample", "mode"), default=None,
                        help="stage 1 decodes the posterior's sample (latte) or its mean (wan: its posterior std stays "
                             "~1 while the means are ~0.5, so samples are mostly noise)")
    parser.add_argument("--object-weight", type=float, default=10.0, help="extra VAE loss weight on object pixels")
    parser.add_argument("--vae-more", nargs="*", type=phase_arg, default=None, metavar="STEPS:FRAMES:BATCH",
                        help="later stage-1 phases, each with a fresh AdamW at --vae-lr, the data continuing (latte "
                             "none; wan 3000:5:4 800:17:2: 17-frame clips train the causal cache beyond one group)")
    parser.add_argument("--vae-resume", help="a VAE snapshot (<output>-snapshots/vae-step-N of an earlier run with the "
                                             "same options): its vae/ is the first --vae-resume-phases phases' result")
    parser.add_argument("--vae-resume-phases", type=int, default=1, help="how many stage-1 phases --vae-resume did")
    parser.add_argument("--vae-from", help="checkpoint folder whose vae/ to reuse (skips stage 1)")
    parser.add_argument("--init-from", help="checkpoint folder whose transformer/ to start stage 2 from")
    parser.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default="v_prediction")
    parser.add_argument("--num-layers", type=int, default=None,
                        help="latte: spatial + temporal block pairs (2, tiny's); wan: blocks (4)")
    parser.add_argument("--skip-connections", action="store_true",
                        help="Skip-DiT skip branches (unit i to unit L-1-i); with --init-from a plain Latte, its units "
                             "are copied to the same relative depth")
    parser.add_argument("--skip-stage1-steps", type=int, default=0,
                        help="Skip-DiT's first stage: steps training only the skip branches (rest frozen), "
                             "before --steps training everything")
    parser.add_argument("--timestep-power", type=float, default=None,
                        help="training timesteps T * u**power: below 1 favours high noise, where motion is decided "
                             "(latte 0.5; wan 0.5: colour 0.69 and direction 0.93 at 8,000 steps, 1.0: direction 0.63 at 6,000)")
    parser.add_argument("--steps", type=int, default=None, help="transformer steps (latte 12000, wan 8000)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per transformer step")
    parser.add_argument("--latent-pool", type=int, default=None,
                        help="training clips encoded once for the transformer stage (latte 4608: 64 of each "
                             "combination; wan 1152: 16)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="captions replaced by the empty prompt")
    parser.add_argument("--val-size", type=int, default=16, help="held-out clips for the validation losses")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="also save the pipeline every N transformer steps to <output>-snapshots/step-N")
    args = parser.parse_args(argv)
    for name, value in FAMILY_DEFAULTS[args.family].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.family == "wan":
        if (args.num_frames - 1) % 4 or (args.vae_frames - 1) % 4:
            parser.error("--num-frames and --vae-frames must be 4k + 1 for wan (its VAE: 1 + 4 frames per latent)")
        if args.prediction_type != "v_prediction" or args.skip_connections or args.vae_base_dim < 1:
            parser.error("wan trains flow matching without skip branches (--prediction-type, --skip-connections are "
                         "latte's); --vae-base-dim must be positive")
    for name in ("height", "width"):
        if getattr(args, name) % 16:
            parser.error(f"--{name} must be divisible by 16 (VAE 8x down x patch 2)")
    if args.vae_resume and args.vae_from:
        parser.error("--vae-resume continues stage 1, --vae-from skips it: give one")
    if args.vae_resume and not 1 <= args.vae_resume_phases <= 1 + len(args.vae_more):
        parser.error(f"--vae-resume-phases must be 1..{1 + len(args.vae_more)} (the stage-1 phases)")
    if args.latent_pool < args.batch_size:
        parser.error("--latent-pool must hold at least one batch")
    if args.skip_stage1_steps and not args.skip_connections:
        parser.error("--skip-stage1-steps trains skip branches: add --skip-connections")
    if args.skip_stage1_steps < 0 or args.num_frames < 1 or args.steps < 0 or args.vae_steps < 0 \
            or not math.isfinite(args.lr):
        parser.error("need --num-frames >= 1 and non-negative step counts")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    pipeline, report = train(args)
    pipeline.save_pretrained(args.output)
    write_json(os.path.join(args.output, "train_demo.json"), report)
    v, t = report["vae"], report["transformer"]
    stage1 = (f"vae from {v['from']}" if "from" in v else
              f"vae val mse {v.get('val_mse_before', float('nan')):.4f} -> {v.get('val_mse_after', float('nan')):.4f} "
              f"({v.get('s_per_step', 0.0):.3f} s/step)")
    print(f"{stage1}; transformer val loss {t['val_loss_before']:.4f} -> {t['val_loss_after']:.4f} "
          f"({t['s_per_step']:.3f} s/step); total {report['total_s']:.0f} s; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
