"""Rectified-flow sampling as Open-Sora 1.2 publishes it (hpcaitech/Open-Sora v1.2.0, opensora/schedulers/rf/).

x_t = (1 - t/T) data + (t/T) noise; the model predicts the velocity v = data - noise, and a step
is x_{t - dt} = x_t + v * dt / T (T = num_timesteps = 1000). Timesteps run uniformly from num_timesteps down, then
each is pushed towards the noisy end by the resolution / length dependent transform

    t' = r t / (1 + (r - 1) t)   (t in [0, 1]),   r = sqrt(H W / 512^2) * sqrt(latent frames) * scale

where "latent frames" is num_frames // 17 * 5 (1 for a single image), as the original counts them.
"""

import json
import math
import os
from dataclasses import asdict, dataclass

import torch


def timestep_transform(t: float, height: int, width: int, num_frames: int, num_timesteps: int = 1000,
                       base_resolution: int = 512 * 512, base_num_frames: int = 1, scale: float = 1.0) -> float:
    """The published shift of one timestep t in [0, num_timesteps] for a (num_frames, height, width) video."""
    t = t / num_timesteps
    ratio_space = math.sqrt(height * width / base_resolution)
    # the original hard-codes the VAE's 17 -> 5 frame compression and ignores a remainder
    latent_frames = 1 if num_frames == 1 else num_frames // 17 * 5
    if latent_frames < 1:
        raise ValueError(f"the timestep transform needs 1 or at least 17 frames, got {num_frames}")
    ratio_time = math.sqrt(latent_frames / base_num_frames)
    ratio = ratio_space * ratio_time * scale
    return ratio * t / (1 + (ratio - 1) * t) * num_timesteps


@dataclass
class RectifiedFlowScheduler:
    num_timesteps: int = 1000
    num_sampling_steps: int = 30
    use_timestep_transform: bool = True
    transform_scale: float = 1.0
    use_discrete_timesteps: bool = False

    config_name = "scheduler_config.json"

    def timesteps(self, num_steps: int | None = None, height: int = 512, width: int = 512,
                  num_frames: int = 1) -> list[float]:
        """The model timesteps of a generation, from num_timesteps (pure noise) down."""
        n = num_steps or self.num_sampling_steps
        ts = [(1.0 - i / n) * self.num_timesteps for i in range(n)]
        if self.use_discrete_timesteps:
            ts = [float(round(t)) for t in ts]
        if self.use_timestep_transform:
            ts = [timestep_transform(t, height, width, num_frames, self.num_timesteps, scale=self.transform_scale)
                  for t in ts]
        return ts

    def set_timesteps(self, num_steps: int | None = None, height: int = 512, width: int = 512, num_frames: int = 1,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """Prepare a generation: the (N,) timesteps and the step sizes, on `device`, so the loop never syncs."""
        ts = self.timesteps(num_steps, height, width, num_frames)
        self.timestep_values = ts  # host-side copy, for code that must not sync with the device
        dts = [(a - b) / self.num_timesteps for a, b in zip(ts, ts[1:] + [0.0])]  # the last step goes to t = 0
        self.step_sizes = torch.tensor(dts, dtype=torch.float32, device=device)
        self.timesteps_tensor = torch.tensor(ts, dtype=torch.float32, device=device)
        return self.timesteps_tensor

    def step(self, velocity: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step from timestep `index` to `index + 1` (or to 0 after the last)."""
        return (sample + velocity * self.step_sizes[index]).to(sample.dtype)

    def add_noise(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t / T) * data + (t / T) * noise, per sample."""
        w = 1 - timesteps.float() / self.num_timesteps
        w = w.view(-1, *([1] * (sample.dim() - 1)))
        return w * sample + (1 - w) * noise

    # ---- the pipeline folder layout ------------------------------------------------------------
    def save_pretrained(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self.config_name), "w") as f:
            json.dump({"_class_name": type(self).__name__, **asdict(self)}, f, indent=2)

    @classmethod
    def from_pretrained(cls, folder: str) -> "RectifiedFlowScheduler":
        with open(os.path.join(folder, cls.config_name)) as f:
            values = json.load(f)
        return cls(**{k: v for k, v in values.items() if not k.startswith("_")})
