"""Official checkpoint layouts for the key-name tests: tests/data/*_state_dict.txt hold one
`name<TAB>shape` line per tensor ('#' lines are comments). The four files without a header are copies of
the project's published-reference key lists (kept here, so the tests need nothing outside the
repository); the osp11_* files were dumped from the official Open-Sora-Plan v1.1.0 classes."""

import os

import torch

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def reference_keys(name: str, prefix: str = "") -> dict[str, tuple]:
    out = {}
    with open(os.path.join(DATA, name)) as f:
        for line in f:
            if line.startswith("#"):
                continue
            key, shape = line.rstrip("\n").split("\t")
            out[prefix + key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return out


def assert_same_layout(model: torch.nn.Module, expected: dict[str, tuple]) -> dict[str, tuple]:
    """Our state dict has exactly the expected names with the expected shapes; returns ours."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
    return ours
