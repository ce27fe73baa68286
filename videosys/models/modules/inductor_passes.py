"""Graph rewrites for inductor on CPU (compile=True): the same maths, less work per element.

Run as inductor's post-grad custom pass (compile.py), on the aten graph after autograd and decompositions:
- 1 + tanh(y) -> 2 sigmoid(2y) (tanh GELU decomposes to 0.5 x (1 + tanh u)): an identity, and inductor's
  vectorised CPU sigmoid is cheaper than its tanh (an 8192 x 1024 GELU on one core: 38.8 -> 26.8 ms; ATen eager
  27.7; scripts/bench_cpu_kernels.py); the GELU was ~12% of a compiled Latte forward.
- addmm(bias, x, W) whose every use is pointwise -> mm(x, W) + bias: ATen's CPU addmm first copies the
  broadcast bias into its output (a full write, then the GEMM reads it back); unfused, the bias add joins the
  pointwise kernel that follows anyway (GELU, gate * out + residual). Inductor does this on GPUs only.
Tensors on other devices are left alone. Outputs equal eager within fp32 rounding (tests/test_compile.py).
"""

import torch

try:  # inductor's custom-pass interface (torch >= 2.6); older torch compiles without these rewrites
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
    from torch._inductor.utils import is_pointwise_use
except ImportError:  # pragma: no cover - torch < 2.6
    CustomGraphPass = None

aten = torch.ops.aten


def _on_cpu(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.device.type == "cpu"


def _call(graph: torch.fx.Graph, target, args: tuple, like: torch.fx.Node) -> torch.fx.Node:
    node = graph.call_function(target, args)
    node.meta["val"] = like.meta["val"]  # same shape, dtype and device as the node it replaces
    return node


def _one_plus_tanh_as_sigmoid(graph: torch.fx.Graph, node: torch.fx.Node) -> bool:
    """add(tanh(y), 1) (tanh GELU's decomposition: 0.5 x (1 + tanh u)) -> 2 sigmoid(2y), the same value without
    cancellation; the tanh must have no other use."""
    a, b = node.args[:2]
    tanh, one = (a, b) if isinstance(a, torch.fx.Node) else (b, a)
    if not (isinstance(tanh, torch.fx.Node) and tanh.target is aten.tanh.default and one == 1
            and node.kwargs.get("alpha", 1) == 1 and len(tanh.users) == 1):
        return False
    with graph.inserting_before(node):
        s = _call(graph, aten.sigmoid.default, (_call(graph, aten.mul.Tensor, (tanh.args[0], 2), node),), node)
        out = _call(graph, aten.mul.Tensor, (s, 2), node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    graph.erase_node(tanh)
    return True


def _unfuse_bias(graph: torch.fx.Graph, node: torch.fx.Node) -> bool:
    if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
        return False
    if not node.users or not all(is_pointwise_use(use) for use in node.users):
        return False
    bias, mat1, mat2 = node.args[:3]
    with graph.inserting_before(node):
        out = _call(graph, aten.add.Tensor, (_call(graph, aten.mm.default, (mat1, mat2), node), bias), node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    return True


REWRITES = {"gelu": (aten.add.Tensor, _one_plus_tanh_as_sigmoid), "bias": (aten.addmm.default, _unfuse_bias)}


class CPURewrites(CustomGraphPass or object):
    """The rewrites named in `only` (default: all; a subset for scripts/bench_vs_diffusers.py --ablate-rewrites)."""

    def __init__(self, only: tuple[str, ...] = tuple(REWRITES)):
        self.only = tuple(only)
        self.rewrites = dict(REWRITES[name] for name in self.only)

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.nodes):
            rewrite = self.rewrites.get(node.target)
            if rewrite is not None and _on_cpu(node):
                rewrite(graph, node)

    def uuid(self) -> bytes:  # inductor's FX-graph cache key: this file's contents and the rewrites chosen
        return get_hash_for_files((__file__,)) + ",".join(self.only).encode()


CPU_REWRITES = CPURewrites() if CustomGraphPass is not None else None
