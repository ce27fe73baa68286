"""`videosys serve --replicas N`: N engines on Ray Serve behind the one API.

The API process keeps everything a client sees: the HTTP API, the request checks, the SQLite job store and
the output folder. Ray Serve runs N replicas of a deployment that loads the engine once (`EngineReplica`),
on this machine or across a Ray cluster; the API process runs one job thread per replica, each handing a
job (or a batch) to the deployment handle, which routes it to a free replica (`max_ongoing_requests=1`);
the replica sends the mp4 bytes back through Ray, and the API process writes them whole into the output
folder. Replicas need no shared disk and never see the job store. A running job's progress is not streamed
from a replica: it shows 0 % until it completes; deleting it cancels the Ray request.
"""

import os
import tempfile

from videosys.core.engine import Cancelled
from videosys.serve.runner import LocalBackend, write_bytes

POLL_S = 0.2  # how often a job thread looks whether its job was deleted while a replica runs it


class EngineReplica:
    """One replica: the engine loaded once, run through the local backend, the videos returned as bytes."""

    def __init__(self, config, threads: int | None = None):
        import torch

        from videosys.core.engine import VideoSysEngine

        if threads:
            torch.set_num_threads(threads)
        self.backend = LocalBackend(VideoSysEngine(config))

    def generate(self, prompts: list[str], seeds: list[int], request: dict) -> tuple[list[bytes], dict]:
        with tempfile.TemporaryDirectory(prefix="videosys-replica-") as folder:
            paths = [os.path.join(folder, f"{i}.mp4") for i in range(len(prompts))]
            stats = self.backend.run(prompts, seeds, request, paths, lambda *progress: None)
            videos = []
            for path in paths:
                with open(path, "rb") as f:
                    videos.append(f.read())
        return videos, {**stats, "replica": os.getpid()}


class RayBackend:
    """The job threads' backend: a job goes to a free replica through the Ray Serve deployment handle."""

    def __init__(self, config, replicas: int, address: str | None = None, cpus_per_replica: float = 1.0,
                 gpus_per_replica: float | None = None):
        import ray
        from ray import serve

        if not ray.is_initialized():
            import videosys

            # the replicas import videosys as this process does (on a cluster: installed on each node)
            source_root = os.path.dirname(os.path.dirname(os.path.abspath(videosys.__file__)))
            python_path = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)
            local = {} if address else dict(num_cpus=max(1, int(replicas * cpus_per_replica)), include_dashboard=False)
            ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": python_path}}, log_to_driver=False,
                     **local)
        serve.start(proxy_location="Disabled")  # the API is ours (FastAPI); Ray Serve only runs the engines
        gpus = gpus_per_replica if gpus_per_replica is not None else (1 if config.torch_device().type == "cuda" else 0)
        deployment = serve.deployment(EngineReplica, name="videosys-engine", num_replicas=replicas,
                                      max_ongoing_requests=1,
                                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus})
        threads = max(1, int(cpus_per_replica)) if config.torch_device().type == "cpu" else None
        self.handle = serve.run(deployment.bind(config, threads), name="videosys", route_prefix=None)
        self.replicas = replicas

    def run(self, prompts: list[str], seeds: list[int], request: dict, paths: list[str], progress) -> dict:
        from ray.exceptions import RayTaskError

        response = self.handle.generate.remote(prompts, seeds, request)
        total = request.get("num_inference_steps") or 0
        while True:
            try:
                videos, stats = response.result(timeout_s=POLL_S)
                break
            except TimeoutError:
                try:
                    progress(0, total, {})  # raises Cancelled when the job was deleted or the server stops
                except Cancelled:
                    response.cancel()
                    raise
            except RayTaskError as err:  # the replica's own exception, as the local backend would raise it
                raise err.as_instanceof_cause() from None
        for data, path in zip(videos, paths):
            write_bytes(path, data)
        return stats

    def shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()
