"""What training a tiny CascadeV on the demo clips would cost: seconds per step of its two stages.

    python scripts/bench_cascadev_train.py --steps 4 --threads 1 --output cascadev_train_cost.json

Stage 1, the tiny SVD-style VAE (AutoencoderKLTemporalDecoder, the `tiny` preset's): L1 reconstruction
+ KL on `--clips` clips x 8 frames at 64 px (the release uses SVD's pretrained VAE; a tiny one has to be
trained, a random one decodes noise). Stage 2, the tiny DiT: epsilon MSE on the VAE latents conditioned
on the (frozen) semantic compressor, as patch/train.py (without its learned-variance term). Each stage
runs `--steps` AdamW steps after one warm-up step; the median is reported with the hours a run of
`--vae-steps` + `--dit-steps` would take at that speed. Nothing is saved: this measures, it does not train.
"""

import argparse
import statistics
import sys
import time

import torch


def demo_frames(step: int, clips: int) -> torch.Tensor:
    """(clips * 8, 3, 64, 64) frames in [-1, 1] of training step `step`."""
    from videosys.utils.demo_data import DemoClips

    x, _ = DemoClips(num_frames=8, height=64, width=64).batch(step, clips)
    return (torch.from_numpy(x).float().permute(0, 1, 4, 2, 3) / 127.5 - 1).reshape(-1, 3, 64, 64)


def timed_steps(step_fn, steps: int) -> list[float]:
    step_fn(0)  # warm-up: allocator, kernels
    out = []
    for s in range(1, steps + 1):
        start = time.perf_counter()
        step_fn(s)
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--clips", type=int, default=4, help="clips of 8 frames per step")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae-steps", type=int, default=500, help="for the estimate (the demo Latte's VAE budget)")
    p.add_argument("--dit-steps", type=int, default=12000, help="for the estimate (the demo Latte's budget)")
    p.add_argument("--output", default="cascadev_train_cost.json")
    args = p.parse_args(argv)
    if args.steps < 1 or args.clips < 1:
        print("bench_cascadev_train.py: error: --steps and --clips must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    from diffusers import DDPMScheduler

    from videosys.models.cascadev.pipeline import CascadeVConfig, tiny_components
    from videosys.utils.files import write_json

    transformer, encoder, vae = tiny_components()
    scale = CascadeVConfig.scale_factor
    n = args.clips

    vae.train()
    vae_opt = torch.optim.AdamW(vae.parameters(), 1e-3)

    def vae_step(step):
        x = demo_frames(step, n)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(), num_frames=8).sample
        loss = (rec - x).abs().mean() + 1e-6 * posterior.kl().mean()
        vae_opt.zero_grad()
        loss.backward()
        vae_opt.step()

    vae_times = timed_steps(vae_step, args.steps)
    vae.eval().requires_grad_(False)
    encoder.eval().requires_grad_(False)
    transformer.train()
    dit_opt = torch.optim.AdamW(transformer.parameters(), 1e-3)
    noise_schedule = DDPMScheduler()  # PixArt's linear betas, 1000 steps

    def dit_step(step):
        x = demo_frames(step, n)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample() * scale  # (n*8, 4, 8, 8)
            cond = torch.nn.functional.interpolate(encoder(x), scale_factor=4, mode="bilinear") * scale
        z = z.view(n, 8, *z.shape[1:]).transpose(1, 2)  # (n, 4, 8, 8, 8)
        cond = cond.view(n, 8, *cond.shape[1:]).transpose(1, 2)
        t = torch.randint(0, 1000, (n,))
        noise = torch.randn_like(z)
        pred = transformer(torch.cat([noise_schedule.add_noise(z, noise, t), cond], 1), t.float())[:, :4]
        loss = ((pred - noise) ** 2).mean()
        dit_opt.zero_grad()
        loss.backward()
        dit_opt.step()

    dit_times = timed_steps(dit_step, args.steps)
    vae_s, dit_s = statistics.median(vae_times), statistics.median(dit_times)
    hours = (vae_s * args.vae_steps + dit_s * args.dit_steps) / 3600
    report = {"threads": args.threads, "clips_per_step": n, "frames": 8, "size": 64,
              "vae_s_per_step": vae_s, "dit_s_per_step": dit_s, "vae_times": vae_times, "dit_times": dit_times,
              "vae_steps": args.vae_steps, "dit_steps": args.dit_steps, "estimated_hours": hours}
    print(f"{'stage':<6} {'s / step':>9} {'steps':>7} {'hours':>6}")
    print(f"{'VAE':<6} {vae_s:>9.2f} {args.vae_steps:>7} {vae_s * args.vae_steps / 3600:>6.2f}")
    print(f"{'DiT':<6} {dit_s:>9.2f} {args.dit_steps:>7} {dit_s * args.dit_steps / 3600:>6.2f}")
    print(f"total  {hours:.2f} h at {args.threads} thread(s)")
    write_json(args.output, report)
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
