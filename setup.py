from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.split("#")[0].strip()
    for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name="videosys",
    version="0.1.0",
    description="Fast text-to-video generation with diffusion transformers: one API, caches, parallelism.",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["videosys", "videosys.*"]),
    # the trained demo models (LatteConfig(preset="demo" / "demo-skip"), WanConfig(preset="demo") once shipped):
    # a few MB of safetensors and configs
    package_data={"videosys": [f"assets/{demo}/{files}" for demo in ("demo-latte", "demo-latte-skip", "demo-wan")
                               for files in ("*.json", "*/*")] + ["serve/page/*"]},
    install_requires=requirements,
    # eval/: plots and multi-node generation. Not listed on purpose: vbench (pins transformers 4.33 and
    # numpy < 2; eval/teacache/vbench/setup_env.sh gives it its own environment, `pip install --no-deps vbench`
    # here for the prompt list) and lpips (pulls torchvision, which replaces a CPU torch; its weights are
    # read as files: eval/teacache/common_metrics/lpips_alex.py).
    extras_require={
        "eval": ["matplotlib", "ray>=2.9"],
        # `videosys serve`; python-multipart: uploads (OpenAI's client sends multipart); ray[serve]: --replicas
        "serve": ["fastapi", "uvicorn", "python-multipart", "ray[serve]>=2.9"],
        # quantize="int8" (torchao weight-only; 0.18 keeps torch 2.13), offload="group" (diffusers' hooks use accelerate)
        "memory": ["torchao>=0.18", "accelerate"],
        # `videosys bench --model wan --peers`: cache-dit's DBCache beside diffusers' hooks (diffusers is a requirement)
        "peers": ["cache-dit==1.5.3"],
        # the documentation site: `mkdocs serve`, `mkdocs build --strict` (CI)
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings-python>=1.10"],
        # httpx: FastAPI's TestClient; selenium drives the system Chromium (.ci/run installs it with apt);
        # openai: the server is tested with OpenAI's own client; torchao: the int8 tests; cache-dit: the Wan peers
        "test": ["pytest>=8", "pytest-timeout", "scikit-image", "matplotlib", "ray[serve]>=2.9", "fastapi", "uvicorn",
                 "python-multipart", "httpx", "selenium", "openai>=2.5", "torchao>=0.18", "cache-dit==1.5.3"],
    },
    entry_points={"console_scripts": ["videosys=videosys.cli:main"]},
)
