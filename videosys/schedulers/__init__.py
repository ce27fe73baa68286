"""Schedulers diffusers lacks."""

from videosys.schedulers.rectified_flow import RectifiedFlowScheduler, timestep_transform

__all__ = ["RectifiedFlowScheduler", "timestep_transform"]
