"""Split a model's graph at one node into a head (edge) and a tail (cloud).

A cut after node k crosses the tensors computed up to k that are used after k. Parameters
(get_attr nodes) never count as crossing: the tail reads its own copy of them. The candidates
are the cuts crossed by exactly one tensor, node k's output; a cut crossed by several (inside a
residual block, or before a multi-scale neck) is made only when asked for by name: the head
then returns the crossing tensors in graph order and the tail takes them in that same order.
The tail returns what the model returns: a tensor, a tuple of tensors, or a dict of them (as a
tuple in key order, named by `Split.outputs`).
"""

from __future__ import annotations

import difflib
import operator
from typing import NamedTuple

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from toolchain.errors import SplitError


class SplitPoint(NamedTuple):
    node: str
    module: str | None  # outermost module path whose last node this is, e.g. "layer2"
    shape: tuple[int, ...]  # of the (first) crossing tensor, one sample, no batch axis
    dtype: str
    position: int
    tensors: tuple[tuple[str, tuple[int, ...]], ...] = ()  # every crossing tensor (node, shape), in graph order

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(shape for _, shape in self.tensors) or (self.shape,)

    @property
    def elements(self) -> int:
        total = 0
        for shape in self.shapes:
            count = 1
            for size in shape:
                count *= size
            total += count
        return total

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.elements

    @property
    def int8_bytes(self) -> int:
        return self.elements


class Split(NamedTuple):
    head: fx.GraphModule  # returns the crossing tensor, or a tuple of them
    tail: nn.Module  # takes them in the same order; returns a tensor or a tuple of tensors
    point: SplitPoint
    outputs: tuple[str, ...]  # names of what the tail returns, in order ("logits" for a lone tensor)


class TupleOutputs(nn.Module):
    """A tail whose graph returns a dict, returning its values as a tuple in key order (ONNX outputs are
    positional)."""

    def __init__(self, tail: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.tail, self.keys = tail, keys

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.tail(*features)
        return tuple(result[key] for key in self.keys)


def trace(module: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule:
    """A GraphModule with per-node shapes (`meta['tensor_meta']`) for one sample of `input_shape`."""
    if isinstance(module, fx.GraphModule):
        graph_module = module
    else:
        try:
            graph_module = fx.symbolic_trace(module)
        except Exception as error:
            raise SplitError(
                f"{type(module).__name__} cannot be traced by torch.fx ({type(error).__name__}: {error}); "
                "torch.fx cannot run code that needs concrete values (control flow on tensors, tensor sizes "
                "passed as Python numbers): change it, or export the model to a .pt2 with torch.export and give "
                "--model FILE.pt2"
            ) from error
    inputs = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        raise SplitError(f"edgesplit splits models with one input tensor; this one takes {len(inputs)}")
    example = torch.zeros(1, *input_shape)
    try:  # a plain run first: ShapeProp prints a traceback of its own before raising
        with torch.no_grad():
            graph_module(example)
    except Exception as error:
        raise SplitError(f"the model does not run on an input of shape 1x{'x'.join(map(str, input_shape))} "
                         f"(--input-shape C,H,W): {str(error).splitlines()[0]}") from error
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example)
    return graph_module


def _module_paths(node: fx.Node) -> set[str]:
    paths = {path for path, _ in node.meta.get("nn_module_stack", {}).values()}
    if node.op == "call_module":
        parts = node.target.split(".")
        paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return paths


def _crossing(nodes: list[fx.Node]) -> list[list[fx.Node]]:
    """For each position k, the non-parameter nodes at or before k that are used after k."""
    position = {node: i for i, node in enumerate(nodes)}
    last_use = {node: max((position[user] for user in node.users), default=-1) for node in nodes}
    live: list[fx.Node] = []
    crossing = []
    for k, node in enumerate(nodes):
        if node.op != "get_attr":
            live.append(node)
        live = [m for m in live if last_use[m] > k]
        crossing.append(list(live))
    return crossing


def _last_nodes_of_modules(nodes: list[fx.Node]) -> dict[str, str]:
    """Node name → outermost module path whose last node it is."""
    last_node: dict[str, fx.Node] = {}
    for node in nodes:
        for path in _module_paths(node):
            last_node[path] = node
    owner: dict[str, str] = {}
    for path in sorted(last_node, key=lambda p: p.count(".")):
        owner.setdefault(last_node[path].name, path)
    return owner


def _tensor_meta(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    return meta if isinstance(meta, torch.fx.passes.shape_prop.TensorMetadata) else None


def _point(node: fx.Node, owner: str | None, position: int, crossing: list[fx.Node]) -> SplitPoint:
    shapes = tuple((n.name, tuple(_tensor_meta(n).shape[1:])) for n in crossing)
    meta = _tensor_meta(crossing[0])
    return SplitPoint(node.name, owner, shapes[0][1], str(meta.dtype).replace("torch.", ""), position, shapes)


def _cuts(graph_module: fx.GraphModule, several: bool) -> list[SplitPoint]:
    nodes = list(graph_module.graph.nodes)
    owners = _last_nodes_of_modules(nodes)
    points = []
    for k, (node, crossing) in enumerate(zip(nodes, _crossing(nodes))):
        feeds_only_output = all(user.op == "output" for user in node.users)
        if (node.op in ("placeholder", "get_attr", "output") or feeds_only_output or not crossing
                or not all(_tensor_meta(n) for n in crossing) or (crossing == [node]) == several
                or (several and any(n.op == "placeholder" for n in crossing))):
            continue
        points.append(_point(node, owners.get(node.name), k, crossing))
    return points


def candidate_points(graph_module: fx.GraphModule) -> list[SplitPoint]:
    """Every point where exactly one tensor crosses the cut, in graph order."""
    return _cuts(graph_module, several=False)


def several_tensor_points(graph_module: fx.GraphModule) -> list[SplitPoint]:
    """Every cut crossed by several tensors (the model's input not among them), in graph order."""
    return _cuts(graph_module, several=True)


def _holds_weights(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return any(True for _ in graph_module.get_submodule(node.target).parameters())
    return node.op == "get_attr" and isinstance(operator.attrgetter(node.target)(graph_module), nn.Parameter)


def default_point(graph_module: fx.GraphModule) -> SplitPoint:
    """For models that name no default: the smallest crossing tensor in the first half of the
    points whose head holds learned weights, so the edge does real but lesser work; among equal
    sizes, the end of the outermost module (what users name), then the later point."""
    nodes = list(graph_module.graph.nodes)
    first_weighted = next((i for i, n in enumerate(nodes) if _holds_weights(graph_module, n)), len(nodes))
    points = [p for p in candidate_points(graph_module) if p.position >= first_weighted]
    if not points:
        raise SplitError("the model has no point after its first weighted layer where a single tensor crosses")
    return min(points[: max(1, len(points) // 2)],
               key=lambda p: (p.elements, p.module is None, (p.module or "").count("."), -p.position))


def _nearest(points: list[SplitPoint], position: int) -> str:
    before = [p for p in points if p.position < position][-1:]
    after = [p for p in points if p.position > position][:1]
    return ", ".join(f"{p.module or p.node} ({'before' if p in before else 'after'})" for p in before + after)


def resolve_point(graph_module: fx.GraphModule, name: str, several: bool = False) -> SplitPoint:
    """A split point named by fx node name or module path (the module's last node); `several` allows a
    cut crossed by several tensors."""
    nodes = list(graph_module.graph.nodes)
    points = candidate_points(graph_module)
    by_node = {node.name: node for node in nodes}
    target = by_node.get(name)
    if target is None:
        owned = [node for node in nodes if name in _module_paths(node)]
        target = owned[-1] if owned else None
    if target is None:
        names = [p.module for p in points if p.module] + [p.node for p in points]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid points include {', '.join(names[:6])}"
        raise SplitError(f"no node or module named {name!r} in the model; {hint} (see `edgesplit list-splits`)")
    for point in points + (several_tensor_points(graph_module) if several else []):
        if point.node == target.name:
            return point
    position = nodes.index(target)
    crossing = _crossing(nodes)[position]
    if target.op == "placeholder" or not target.users or all(u.op == "output" for u in target.users):
        reason = "is the model's input or output, so one half would be empty"
    elif len(crossing) > 1:
        reason = (f"is crossed by {len(crossing)} tensors ({', '.join(n.name for n in crossing)}), "
                  "e.g. inside a residual block, which only build-engines --split cuts")
    else:
        reason = "does not produce a tensor that the rest of the model uses alone"
    raise SplitError(f"cannot split at {name!r} (node {target.name}): it {reason}; "
                     f"nearest valid points: {_nearest(points, position) or 'none'}")


def _needed(roots: list[fx.Node], stops: set[fx.Node] = frozenset()) -> set[fx.Node]:
    """`roots` and everything they are computed from, not walking past `stops`."""
    needed, pending = set(), list(roots)
    while pending:
        node = pending.pop()
        if node not in needed:
            needed.add(node)
            if node not in stops:
                pending.extend(node.all_input_nodes)
    return needed


def output_names(result) -> tuple[str, ...]:
    """Names of what a model returns: ('logits',) for a tensor, output0.. for a tuple, the keys of a dict."""
    if isinstance(result, torch.Tensor):
        return ("logits",)
    values = list(result.values()) if isinstance(result, dict) else result
    if isinstance(result, (tuple, list, dict)) and values and all(isinstance(v, torch.Tensor) for v in values):
        return tuple(str(key) for key in result) if isinstance(result, dict) else \
            tuple(f"output{i}" for i in range(len(result)))
    found = type(result).__name__
    if isinstance(result, (tuple, list, dict)):
        keys = result if isinstance(result, dict) else range(len(result))
        odd = [f"{key!r}: {type(result[key]).__name__}" for key in keys if not isinstance(result[key], torch.Tensor)]
        found += f" holding {', '.join(odd)}" if odd else " that is empty"
    raise SplitError(f"the model returns a {found}: edgesplit splits models that return a tensor, a tuple of "
                     "tensors or a dict of tensors")


def _graph_of(nodes: list[fx.Node], env: dict[fx.Node, fx.Node]) -> fx.Graph:
    """A graph of copies of `nodes` (in order); `env` may pre-map nodes to existing ones."""
    graph = fx.Graph()
    for node, replacement in env.items():
        env[node] = graph.placeholder(replacement)
    for node in nodes:
        env[node] = graph.node_copy(node, lambda n: env[n])
    return graph


INPUT = "input"  # the cut before the model's first node: the image itself crosses


def unsplit(module: nn.Module, input_shape: tuple[int, int, int]) -> Split:
    """The whole model as a Split at its input: an identity head and the model as the tail. Cloud-only sends the
    image to that tail; edge-only runs it on the device."""
    with torch.no_grad():
        result = module.eval()(torch.zeros(1, *input_shape))
    names = output_names(result)
    point = SplitPoint(INPUT, None, tuple(input_shape), "float32", 0, ((INPUT, tuple(input_shape)),))
    return Split(nn.Identity(), TupleOutputs(module, names).eval() if isinstance(result, dict) else module, point,
                 names)


def split_model(module: nn.Module, split: str, input_shape: tuple[int, int, int], several: bool = False) -> Split:
    """Head and tail with tail(head(x)) == module(x) (tail(*head(x)) when several tensors cross)."""
    graph_module = trace(module, input_shape)
    point = resolve_point(graph_module, split, several)
    nodes = list(graph_module.graph.nodes)
    by_name = {node.name: node for node in nodes}
    crossing, output = [by_name[name] for name, _ in point.tensors], nodes[-1]

    head_env: dict = {}
    head_graph = _graph_of([n for n in nodes if n in _needed(crossing)], head_env)
    head_graph.output(head_env[crossing[0]] if len(crossing) == 1 else tuple(head_env[n] for n in crossing))

    tail_nodes = _needed([output], stops=set(crossing)) - set(crossing)
    tail_graph = _graph_of([n for n in nodes if n in tail_nodes], {n: n.name for n in crossing})
    tail_output = tail_graph.output_node()
    result = tail_output.args[0]
    if isinstance(result, (tuple, list)) and len(result) == 1:  # torch.export wraps outputs in a pytree
        tail_output.args = (result[0],)

    head, tail = fx.GraphModule(graph_module, head_graph).eval(), fx.GraphModule(graph_module, tail_graph).eval()
    with torch.no_grad():
        features = head(torch.zeros(1, *input_shape))
        result = tail(*features) if isinstance(features, tuple) else tail(features)
    names = output_names(result)
    return Split(head, TupleOutputs(tail, names).eval() if isinstance(result, dict) else tail, point, names)
