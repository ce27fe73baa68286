"""The HTTP API of `videosys serve` (FastAPI) over one loaded engine; the page at / is its client.

    POST /jobs                  {"prompt": ..., "cache": "teacache-fast", "num_inference_steps": 20, ...}
    GET  /jobs, /jobs/{id}      records: state, progress (steps done, cache reuse so far), stats, error
    GET  /jobs/{id}/video       the mp4
    POST /jobs/{id}/cancel      queued: removed; running: stopped after its current step
    GET  /compare?a=..&b=..     two finished jobs' timings and the PSNR between their videos
    GET  /info, /health

Request fields are the family's generate() arguments under the config's names; a request is checked
by the config itself before it is queued: each field's type and range (the family config rebuilt
with it), then the whole request through `config.check_request`, the function generate() and the
engine run (the family's size grid: Latte's height divisible by 16, CogVideoX's 8k+1 frames, ...),
so a bad value gets a 422 naming the field at submission.
"""

import dataclasses
import inspect
import os
import typing
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ConfigDict, Field, create_model

from videosys.cache import choices, published_names
from videosys.cache.registry import legacy_specs, legacy_switches
from videosys.core.config import RequestError
from videosys.core.memory import check_fits
from videosys.serve.jobs import DONE, JobRunner, JobStore, QueueFull
from videosys.utils.video import read_video

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PSNR_IDENTICAL = 100.0  # dB when MSE < 1e-10, as eval/teacache/common_metrics (common_metrics_on_video_quality)


def generation_fields(config) -> dict[str, tuple[typing.Any, typing.Any]]:
    """{name: (type, default)} of the family's generate() arguments after the prompt, the defaults the
    config's (published or preset) where it has the field; plus fps, which sets the file's frame rate."""
    generate = config.pipeline_cls.generate
    hints = typing.get_type_hints(generate)
    fields = {}
    for name, param in list(inspect.signature(generate).parameters.items())[2:]:  # after self, prompt
        default = getattr(config, name, param.default)
        fields[name] = (hints.get(name, typing.Any), default)
    fields.setdefault("fps", (int, config.fps))
    return fields


def _request_model(config, default_cache: str | None):
    fields = {name: (kind | None, Field(None, description=f"default: {default!r}"))
              for name, (kind, default) in generation_fields(config).items()}
    return create_model("GenerateRequest", __config__=ConfigDict(extra="forbid"),
                        prompt=(str, Field(..., min_length=1, description="what to generate")),
                        cache=(str | None, Field(default_cache, description=f"a registered cache: one of {choices()}; "
                                                 "none given: the server's")),
                        **fields)


def _type_name(kind) -> str:
    """"int" for int | None, "int|str" for int | str | None: what the page's inputs parse to."""
    kinds = [k for k in (typing.get_args(kind) or (kind,)) if k is not type(None)]
    return "|".join(getattr(k, "__name__", str(k)) for k in kinds)


def _cache_name(config) -> str | None:
    """The server's configured caches as one cache name, or None where no name says it (a list, a
    config object, several legacy switches): a request without `cache` then runs what the server was given."""
    switched = legacy_specs(config)  # the methods' legacy switches (enable_teacache, ...) as specs
    if config.cache is not None:
        return config.cache if isinstance(config.cache, str) and not switched else None
    if len(switched) > 1:
        return None
    return switched[0] if switched else "none"


def validate_request(config, values: dict, transformer=None) -> None:
    """Each field through the config's own validation (the config rebuilt with it: its type and range), then
    the request as generate() would take it (config.check_request) and its size against the memory available
    (core/memory.check_fits, with the loaded `transformer`'s widths); raises a 422 listing every bad field by
    name."""
    config_names = {f.name for f in dataclasses.fields(config)}
    errors = []
    for name, value in values.items():
        if name not in config_names:
            continue
        # a request's cache replaces the server's (flags included), as engine.set_cache does
        changes = {name: value, **({switch: False for switch in legacy_switches()} if name == "cache" else {})}
        try:
            dataclasses.replace(config, **changes)
        except RequestError as err:  # the family's checks on the rebuilt config's values name their field
            errors.append({"loc": ("body", err.field), "msg": str(err), "type": "value_error"})
        except (ValueError, TypeError) as err:
            errors.append({"loc": ("body", name), "msg": str(err), "type": "value_error"})
    if not errors:  # the request together, as generate() takes it (a size and a named resolution, ...)
        try:
            resolved = config.check_request({k: v for k, v in values.items() if k != "cache"})
            check_fits(config, resolved, transformer)  # 422 now, not an allocation error in the job
        except RequestError as err:
            errors.append({"loc": ("body", err.field), "msg": str(err), "type": "value_error"})
        except (ValueError, TypeError) as err:
            errors.append({"loc": ("body",), "msg": str(err), "type": "value_error"})
    if errors:
        raise RequestValidationError(errors)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the per-frame PSNR (dB) of two (T, H, W, 3) uint8 videos, frames in [0, 1]."""
    x, y = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    per_frame = np.where(mse < 1e-10, PSNR_IDENTICAL, -10 * np.log10(np.maximum(mse, 1e-30)))
    return float(per_frame.mean())


def create_app(engine, output_dir: str, max_queue: int = 8, model: str | None = None, rebuild_engine=None):
    """The app over a built engine; the job thread starts and stops with the app (uvicorn or a TestClient)."""
    config = engine.config
    model = model or config.model_name
    store = JobStore(output_dir, max_queue)
    default_cache = _cache_name(config)
    GenerateRequest = _request_model(config, default_cache)
    runner = JobRunner(store, engine, rebuild_engine)

    @asynccontextmanager
    async def lifespan(app):
        runner.start()
        yield
        runner.shutdown()

    app = FastAPI(title="videosys serve", lifespan=lifespan,
                  description=f"Text-to-video generation with {model} ({config.preset or config.model_path}).")
    app.state.store, app.state.runner = store, runner

    def job_or_404(job_id: str) -> dict:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model, "queued": len(store.queue),
                "running": [j["id"] for j in store.list() if j["state"] == "running"]}

    @app.get("/info")
    def info():
        fields = [{"name": name, "type": _type_name(kind), "default": default}
                  for name, (kind, default) in generation_fields(config).items()]
        return {"models": [model], "model": model, "preset": config.preset, "model_path": config.model_path,
                "num_gpus": config.num_gpus, "caches": ["none", *published_names()], "default_cache": default_cache,
                "fields": fields, "max_queue": max_queue}

    @app.post("/jobs", status_code=202)
    def submit(request: GenerateRequest):  # noqa: F821 (built above from the config)
        values = {k: v for k, v in request.model_dump().items() if v is not None}
        if runner.engine.pipeline is None:
            raise HTTPException(503, "the engine is down (a rank failed and it could not be rebuilt)")
        validate_request(config, {k: v for k, v in values.items() if k != "prompt"},
                         runner.engine.pipeline.transformer)
        values.setdefault("num_inference_steps", config.num_inference_steps)
        try:
            return store.submit(values, model)
        except QueueFull as err:
            raise HTTPException(429, str(err))

    @app.get("/jobs")
    def list_jobs():
        return store.list()

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str):
        return job_or_404(job_id)

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        job_or_404(job_id)
        return store.cancel(job_id)

    @app.get("/jobs/{job_id}/video")
    def video(job_id: str):
        job = job_or_404(job_id)
        if job["state"] != DONE:
            raise HTTPException(409, f"job {job_id} is {job['state']}, it has no video")
        return FileResponse(store.video_path(job_id), media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.get("/compare")
    def compare(a: str = Query(..., description="a job id"), b: str = Query(..., description="another job id")):
        jobs = [job_or_404(a), job_or_404(b)]
        for job in jobs:
            if job["state"] != DONE:
                raise HTTPException(409, f"job {job['id']} is {job['state']}, it has no video")
        va, vb = (read_video(store.video_path(j["id"]))[0] for j in jobs)
        if va.shape != vb.shape:
            raise HTTPException(422, f"the videos differ in shape: {va.shape} vs {vb.shape}")
        return {"a": jobs[0], "b": jobs[1], "psnr": round(psnr(va, vb), 3)}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(PAGE_DIR, "index.html"))

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
    return app
