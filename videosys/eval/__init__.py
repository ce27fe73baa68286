"""Evaluation: video fidelity metrics (metrics.py: PSNR / SSIM / LPIPS, lpips.py: the LPIPS network and
its weights), the demo model's prompt-accuracy tracker (demo.py), the speed / fidelity frontier
(frontier.py) and the benchmark scripts' shared options (runs.py). scripts/ and eval/ hold the command
lines that call these."""
