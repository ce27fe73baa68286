"""Process groups for CFG parallelism x sequence parallelism, on a torch DeviceMesh.

The mesh is (cfg, sp): cfg is 2 when the cond and uncond branches run on different ranks,
else 1; sp is the rest. The engine owns one ParallelState; models only ask it for their
group, size and rank. A single process gets ParallelState() with no groups at all.
"""

from dataclasses import dataclass

import torch.distributed as dist

from videosys.core import comm


@dataclass
class ParallelState:
    cfg_size: int = 1
    sp_size: int = 1
    mesh: object = None  # torch.distributed.device_mesh.DeviceMesh when world size > 1

    @property
    def world_size(self) -> int:
        return self.cfg_size * self.sp_size

    def group(self, name: str):
        if self.mesh is None or (self.cfg_size if name == "cfg" else self.sp_size) == 1:
            return None
        return self.mesh.get_group(name)

    @property
    def sp_group(self):
        return self.group("sp")

    @property
    def cfg_group(self):
        return self.group("cfg")

    @property
    def sp_rank(self) -> int:
        return comm.group_rank(self.sp_group)

    @property
    def cfg_rank(self) -> int:
        return comm.group_rank(self.cfg_group)

    @property
    def world_group(self):
        """Every rank (the group whose reductions equal a single process's batched statistics)."""
        return None if self.world_size == 1 else dist.group.WORLD


def mesh_shape(world_size: int, cfg_parallel: bool) -> tuple[int, int]:
    """(cfg, sp) for a world: cfg parallelism takes a factor of 2 when asked for and possible."""
    if cfg_parallel and world_size % 2:
        raise ValueError(f"cfg_parallel needs an even number of processes, got {world_size}")
    cfg = 2 if cfg_parallel and world_size >= 2 else 1
    return cfg, world_size // cfg


def init_parallel(cfg_parallel: bool, device_type: str) -> ParallelState:
    """The mesh over the already-initialised default process group."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    cfg, sp = mesh_shape(world, cfg_parallel)
    if world == 1:
        return ParallelState()
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device_type, (cfg, sp), mesh_dim_names=("cfg", "sp"))
    return ParallelState(cfg_size=cfg, sp_size=sp, mesh=mesh)
