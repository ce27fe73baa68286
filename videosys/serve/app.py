"""The HTTP API of `videosys serve` (FastAPI): OpenAI's video API, which its clients speak, over our engine(s).

    POST   /v1/videos               create: prompt, model, seconds | num_frames, size "WxH", input_reference
                                    (an image upload, image-to-video families), and ours: seed, steps,
                                    guidance, negative_prompt, cache and the family's other generate() fields;
                                    JSON or multipart/form-data (what OpenAI's client sends)
    GET    /v1/videos               list (after, limit, order)
    GET    /v1/videos/{id}          status queued / in_progress / completed / failed, progress 0-100
    GET    /v1/videos/{id}/content  the mp4
    DELETE /v1/videos/{id}          cancel (a running job stops at its next step) and delete, files included
    GET    /v1/models, /info, /compare?a=..&b=.., /health (no key), / (the page)

A request is checked before it is queued, by the config itself: each field's type and range (the family
config rebuilt with it), then the whole request through `config.check_request`, the function generate() and
the engine run (the family's size grid: Latte's height divisible by 16, CogVideoX's 8k+1 frames, ...); a bad
value is a 400 whose error names the field (`param`). No request field is a server path: an image comes in as
an upload, is checked (type, size, pixels) and kept in the output folder; nothing outside it is read or
written through the API. With an API key every route but /health and the page needs `Authorization: Bearer`.
"""

import dataclasses
import hmac
import inspect
import io
import json
import os
import typing
from contextlib import asynccontextmanager

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from videosys.cache import published_names
from videosys.cache.registry import legacy_specs, legacy_switches
from videosys.core.config import RequestError, check_seed
from videosys.core.memory import check_fits
from videosys.serve.jobs import DONE, RUNNING, JobStore, QueueFull
from videosys.serve.runner import JobRunner, LocalBackend
from videosys.utils.video import read_video

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PSNR_IDENTICAL = 100.0  # dB when MSE < 1e-10, as eval/teacache/common_metrics (common_metrics_on_video_quality)
IMAGE_FIELDS = ("image", "reference")  # generate() arguments that take an image (a path there): uploads here
ALIASES = {"steps": "num_inference_steps", "guidance": "guidance_scale"}  # OpenAI-style names of ours
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
MAX_PIXELS = 4096 * 4096  # a larger image is refused (a decompression bomb fills memory before any check)


class ApiError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


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


def image_field(config) -> str | None:
    """The generate() argument an uploaded input_reference goes to (None: a text-to-video family)."""
    return next((name for name in IMAGE_FIELDS if name in generation_fields(config)), None)


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


def _public(name: str) -> str:
    return "input_reference" if name in IMAGE_FIELDS else name


def validate_request(config, values: dict, transformer=None) -> dict:
    """Each field through the config's own validation (the config rebuilt with it: its type and range), then
    the request as generate() would take it (config.check_request); the resolved values, or an ApiError (400)
    naming the first bad field (`param`) and listing every one in its message. A size the memory cannot hold
    (core/memory.check_fits, with the loaded `transformer`'s widths where there is one) is a 422 naming the
    field: refused now, not an allocation error in the job."""
    config_names = {f.name for f in dataclasses.fields(config)}
    errors = []
    for name, value in values.items():
        if name not in config_names or name in IMAGE_FIELDS:  # an upload's image: the config keeps a CLI path
            continue
        # a request's cache replaces the server's (flags included), as engine.set_cache does
        changes = {name: value, **({switch: False for switch in legacy_switches()} if name == "cache" else {})}
        try:
            dataclasses.replace(config, **changes)
        except RequestError as err:  # the family's checks on the rebuilt config's values name their field
            errors.append((err.field, str(err)))
        except (ValueError, TypeError) as err:
            errors.append((name, str(err)))
    resolved = {}
    if not errors:  # the request together, as generate() takes it (a size and a named resolution, ...)
        try:
            resolved = config.check_request({k: v for k, v in values.items() if k != "cache"})
        except RequestError as err:
            errors.append((err.field, str(err)))
        except (ValueError, TypeError) as err:
            errors.append((None, str(err)))
    if errors:
        message = "; ".join(f"{_public(f)}: {m}" if f in IMAGE_FIELDS else m for f, m in errors)
        first = errors[0][0]
        raise ApiError(400, message, _public(first) if first else None, "invalid_value")
    try:
        check_fits(config, resolved, transformer)
    except RequestError as err:
        raise ApiError(422, str(err), err.field, "too_large") from None
    return resolved


def check_image(data: bytes, limit: int) -> str:
    """An uploaded image's extension (png, jpg, webp) once it is checked: its size, its type (decoded, not
    named), its pixels; else an ApiError naming input_reference (never a path: uploads have none)."""
    from PIL import Image

    if len(data) > limit:
        raise ApiError(413, f"input_reference is {len(data)} bytes; at most {limit}", "input_reference", "too_large")
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (w, h) = image.format, image.size
            if kind not in IMAGE_FORMATS:
                raise ApiError(400, f"input_reference must be a PNG, JPEG or WebP image, got {kind}", "input_reference",
                               "unsupported_type")
            if w * h > MAX_PIXELS:
                raise ApiError(400, f"input_reference is {w}x{h}: at most {MAX_PIXELS} pixels", "input_reference",
                               "too_large")
            image.load()  # decodes it whole: a truncated or corrupt file fails here, not in the job
    except ApiError:
        raise
    except Exception:
        raise ApiError(400, "input_reference is not a readable image (PNG, JPEG or WebP)", "input_reference",
                       "unsupported_type") from None
    return IMAGE_FORMATS[kind]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the per-frame PSNR (dB) of two (T, H, W, 3) uint8 videos, frames in [0, 1]."""
    x, y = a.astype(np.float64) / 255, b.astype(np.float64) / 255
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(axis=1)
    per_frame = np.where(mse < 1e-10, PSNR_IDENTICAL, -10 * np.log10(np.maximum(mse, 1e-30)))
    return float(per_frame.mean())


class RequestReader:
    """A create request's fields (JSON, or multipart as OpenAI's client sends it) as the values generate() takes,
    checked: the OpenAI names mapped to ours, a form's strings parsed as each field's type, paths refused."""

    def __init__(self, config, model: str, default_cache: str | None, max_upload: int, backend=None):
        self.config, self.model, self.default_cache, self.max_upload = config, model, default_cache, max_upload
        self.backend = backend  # a local engine's transformer sizes the memory estimate (replicas: the config)
        self.fields = generation_fields(config)
        self.image_field = image_field(config)

    async def read(self, request: Request) -> tuple[dict, bytes | None]:
        kind = request.headers.get("content-type", "")
        upload = None
        if kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded"):
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_upload + 2 ** 20:  # before the form spools it anywhere
                raise ApiError(413, f"the request is {length} bytes; an input_reference is at most {self.max_upload}",
                               "input_reference", "too_large")
            form = await request.form(max_files=1, max_fields=64, max_part_size=64 * 1024)
            body = {}
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name != "input_reference":
                        raise ApiError(400, f"{name}: only input_reference takes a file", name, "unknown_parameter")
                    upload = await value.read(self.max_upload + 1)
                elif value != "":
                    body[name] = self._parse(name, value)
        else:
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(400, "the body must be JSON or multipart/form-data") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object")
        return body, upload

    def _parse(self, name: str, raw: str):
        """A form field's string as its field's type ("3" -> 3 for seed), as `--set` parses it."""
        name = ALIASES.get(name, name)
        if name in ("prompt", "model", "size", "seconds", "cache", "negative_prompt"):
            return raw
        kind = self.fields.get(name, (None,))[0]
        kinds = set(typing.get_args(kind) or (kind,)) - {type(None)}
        if kinds and kinds <= {int, float}:
            try:
                return int(raw) if int in kinds and raw.lstrip("-").isdigit() else float(raw)
            except ValueError:
                raise ApiError(400, f"{name} must be a number, got {raw!r}", name, "invalid_type") from None
        try:
            return type(self.config).parse_field(name, raw)
        except ValueError as err:
            raise ApiError(400, str(err), name, "invalid_type") from None

    def values(self, body: dict, upload: bytes | None) -> tuple[dict, dict, tuple[bytes, str] | None]:
        """(the job's request: generate()'s values, prompt and cache; what the Video object shows; the checked
        upload) or an ApiError naming the field."""
        body = dict(body)
        prompt = body.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, "prompt must be a non-empty string", "prompt", "missing_required_parameter")
        model = body.pop("model", None)
        if model is not None and model != self.model:
            raise ApiError(404, f"model {model!r} is not served here; this server has {self.model!r}", "model",
                           "model_not_found")
        if "input_reference" in body:
            raise ApiError(400, "input_reference must be an uploaded image file (multipart/form-data)",
                           "input_reference", "invalid_type")
        for alias, name in ALIASES.items():
            if alias in body:
                if name in body:
                    raise ApiError(400, f"give {alias} or {name}, not both", alias, "conflicting_parameters")
                body[name] = body.pop(alias)
        for name in list(body):
            if name in IMAGE_FIELDS:  # a generate() argument that would read a server path: never from a request
                raise ApiError(400, f"{name}: images come as an input_reference upload, never as a path", name,
                               "unknown_parameter")
            if name not in self.fields and name not in ("cache", "size", "seconds"):
                allowed = sorted(set(self.fields) - set(IMAGE_FIELDS)) + ["cache", "guidance", "model",
                                                                           "seconds", "size", "steps"]
                raise ApiError(400, f"unknown field {name!r}; allowed: {', '.join(allowed)}", name,
                               "unknown_parameter")
        if "seed" in body:
            try:
                body["seed"] = check_seed(body["seed"])
            except RequestError as err:
                raise ApiError(400, str(err), "seed", "invalid_type") from None
        fps = body.get("fps")  # a bad one is refused below, by the config's checks
        fps = fps if isinstance(fps, int) and not isinstance(fps, bool) and fps > 0 else self.config.fps
        named = {"size", "seconds"} & set(body)
        if "size" in body:
            self._size(body)
        if "seconds" in body:
            self._seconds(body, fps)
        if self.default_cache is not None:
            body.setdefault("cache", self.default_cache)
        reference = None
        if upload is not None:
            if self.image_field is None:
                raise ApiError(400, f"{self.model} is a text-to-video model: it takes no input_reference",
                               "input_reference", "unsupported_parameter")
            reference = (upload, check_image(upload, self.max_upload))
            body[self.image_field] = _placeholder_image()
        try:
            pipeline = getattr(getattr(self.backend, "engine", None), "pipeline", None)
            resolved = validate_request(self.config, body, getattr(pipeline, "transformer", None))
        except ApiError as err:  # a size or a duration the family refuses: named as the client named it
            if err.param == "input_reference" and upload is None:  # the family's words are the Python API's
                err.message = f"{self.model} is an image-to-video model: upload the first frame as input_reference"
            err.param = next((given for given, ours in (("size", ("width", "height")), ("seconds", ("num_frames",)))
                              if given in named and err.param in ours), err.param)
            raise
        body.pop(self.image_field, None)
        body.setdefault("num_inference_steps", resolved.get("num_inference_steps"))
        if reference is not None:
            body["reference_field"] = self.image_field
        frames, height, width = (resolved.get(k) for k in ("num_frames", "height", "width"))
        shown = {"size": f"{width}x{height}" if width and height else "",
                 "seconds": f"{round(frames / fps, 2):g}" if isinstance(frames, int) else str(frames or "")}
        return {"prompt": prompt, **body}, shown, reference

    def _size(self, body: dict) -> None:
        size = body.pop("size")
        parts = size.lower().split("x") if isinstance(size, str) else []
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ApiError(400, f"size must be 'WIDTHxHEIGHT' (e.g. '64x64'), got {size!r}", "size", "invalid_value")
        if "width" in body or "height" in body:
            raise ApiError(400, "give size or width / height, not both", "size", "conflicting_parameters")
        body["width"], body["height"] = int(parts[0]), int(parts[1])

    def _seconds(self, body: dict, fps: int) -> None:
        seconds = body.pop("seconds")
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise ApiError(400, f"seconds must be a number, got {seconds!r}", "seconds", "invalid_value") from None
        if "num_frames" in body:
            raise ApiError(400, "give seconds or num_frames, not both", "seconds", "conflicting_parameters")
        if not value > 0:
            raise ApiError(400, f"seconds must be > 0, got {seconds!r}", "seconds", "invalid_value")
        body["num_frames"] = max(1, round(value * fps))


def _placeholder_image():
    """What the request checks see for an uploaded image (they check that one is there, not its pixels)."""
    from PIL import Image

    return Image.new("RGB", (8, 8))


def video_object(job: dict) -> dict:
    """A job as OpenAI's Video object, with our fields after OpenAI's."""
    request, progress, shown = job["request"], job["progress"], job["request"].get("shown", {})
    total = progress.get("total_steps") or 1
    percent = 100 if job["status"] == DONE else int(100 * progress["steps_done"] / total) \
        if job["status"] == RUNNING else 0
    error = dict(job["error"], param=None) if job["error"] else None
    return {"id": job["id"], "object": "video", "model": job["model"], "status": job["status"], "progress": percent,
            "created_at": int(job["created"]), "completed_at": int(job["finished"]) if job["status"] == DONE else None,
            "expires_at": None, "prompt": request["prompt"], "seconds": shown.get("seconds", ""),
            "size": shown.get("size", ""), "error": error, "remixed_from_video_id": None,
            "request": {k: v for k, v in request.items() if k not in ("reference_field", "shown")},
            "input_reference": bool(job["reference"]), "steps_done": progress["steps_done"],
            "total_steps": progress["total_steps"], "cache_progress": progress["cache"], "stats": job["stats"],
            "attempts": job["attempts"]}


def batch_key(config, request: dict, has_reference: bool) -> str | None:
    """The key jobs batch under (None: runs alone): the same request but for prompt and seed, uncached, on a
    family whose batch reproduces its single runs (VideoSysPipeline.takes_seed_lists). Caches that decide
    from the latents (TeaCache, ...) decide once for a whole batch, so a cached job runs alone."""
    if has_reference or not config.pipeline_cls.takes_seed_lists(config):
        return None
    cache = request.get("cache")
    if (config.cache_configs() if cache is None else config.resolve_cache(cache)):
        return None
    return json.dumps({k: v for k, v in request.items() if k not in ("prompt", "seed", "shown")}, sort_keys=True)


def create_app(engine, output_dir: str, max_queue: int = 8, model: str | None = None, rebuild_engine=None, *,
               api_key: str | None = None, max_batch: int = 1, config=None, backend=None, workers: int = 1,
               max_upload: int = 10 * 2 ** 20):
    """The app over a built engine (or `config` and a `backend` with `workers` threads: the replicas); the job
    threads start and stop with the app (uvicorn or a TestClient)."""
    config = config or engine.config
    model = model or config.model_name
    store = JobStore(output_dir, max_queue)
    default_cache = _cache_name(config)
    backend = backend or LocalBackend(engine, rebuild_engine)
    runner = JobRunner(store, backend, max_batch, workers)
    reader = RequestReader(config, model, default_cache, max_upload, backend)

    @asynccontextmanager
    async def lifespan(app):
        runner.start()
        yield
        runner.shutdown()
        store.close()

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "a valid API key is needed: Authorization: Bearer <key>", code="invalid_api_key",
                           kind="authentication_error")

    app = FastAPI(title="videosys serve", lifespan=lifespan,
                  description=f"Text-to-video generation with {model} ({config.preset or config.model_path}).")
    app.state.store, app.state.runner = store, runner
    app.add_exception_handler(ApiError, lambda request, err: err.response())
    app.add_exception_handler(RequestValidationError, lambda request, err: ApiError(
        400, "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in err.errors()),
        str(err.errors()[0]["loc"][-1])).response())
    guarded = [Depends(authorized)]

    def job_or_404(job_id: str) -> dict:
        job = store.get(job_id)
        if job is None:
            raise ApiError(404, f"no video {job_id!r}", "video_id", "not_found")
        return job

    def completed_video(job_id: str) -> tuple[dict, str]:
        job = job_or_404(job_id)
        if job["status"] != DONE:
            raise ApiError(409, f"video {job_id} is {job['status']}: it has no content yet", "video_id", "not_ready")
        return job, store.video_path(job_id)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model, "queued": store.queued()}

    @app.get("/info", dependencies=guarded)
    def info():
        fields = [{"name": name, "type": _type_name(kind), "default": default}
                  for name, (kind, default) in generation_fields(config).items() if name not in IMAGE_FIELDS]
        return {"models": [model], "model": model, "preset": config.preset, "model_path": config.model_path,
                "num_gpus": config.num_gpus, "caches": ["none", *published_names()], "default_cache": default_cache,
                "fields": fields, "max_queue": max_queue, "max_batch": max_batch, "workers": workers,
                "input_reference": reader.image_field is not None, "fps": config.fps}

    @app.get("/v1/models", dependencies=guarded)
    def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "videosys", "created": 0}]}

    @app.post("/v1/videos", dependencies=guarded)
    async def create(request: Request):
        body, upload = await reader.read(request)
        if isinstance(backend, LocalBackend) and backend.engine.pipeline is None:
            raise ApiError(503, "the engine is down (a rank failed and it could not be rebuilt)", kind="server_error")
        values, shown, reference = reader.values(body, upload)
        values["shown"] = shown
        try:
            job = store.submit(values, model, batch_key(config, values, reference is not None), reference)
        except QueueFull as err:
            raise ApiError(429, str(err), code="queue_full", kind="rate_limit_error") from None
        return video_object(job)

    @app.get("/v1/videos", dependencies=guarded)
    def list_videos(after: str | None = None, limit: int = Query(20, ge=1, le=100),
                    order: typing.Literal["asc", "desc"] = "desc"):
        jobs = store.list(order, after, limit + 1)
        data = [video_object(j) for j in jobs[:limit]]
        return {"object": "list", "data": data, "has_more": len(jobs) > limit,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    @app.get("/v1/videos/{video_id}", dependencies=guarded)
    def retrieve(video_id: str):
        return video_object(job_or_404(video_id))

    @app.get("/v1/videos/{video_id}/content", dependencies=guarded)
    def content(video_id: str, variant: str = "video"):
        if variant != "video":
            raise ApiError(400, f"variant {variant!r} is not available; this server has 'video'", "variant")
        _, path = completed_video(video_id)
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @app.delete("/v1/videos/{video_id}", dependencies=guarded)
    def delete(video_id: str):
        if not store.delete(video_id):
            raise ApiError(404, f"no video {video_id!r}", "video_id", "not_found")
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/compare", dependencies=guarded)
    def compare(a: str = Query(..., description="a video id"), b: str = Query(..., description="another video id")):
        (ja, pa), (jb, pb) = completed_video(a), completed_video(b)
        va, vb = read_video(pa)[0], read_video(pb)[0]
        if va.shape != vb.shape:
            raise ApiError(422, f"the videos differ in shape: {va.shape} vs {vb.shape}")
        return {"a": video_object(ja), "b": video_object(jb), "psnr": round(psnr(va, vb), 3)}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(PAGE_DIR, "index.html"))

    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
    return app
