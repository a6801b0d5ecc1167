"""Map ONNX values to record sites (module paths), so an ONNX dump pairs with a PyTorch dump layer by layer.

The rules (protocol/SPEC.md section 12, "Naming ONNX values"):

1. A node's scope chain comes from the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, or else from a
   ``/``-scoped node name (TorchScript exporter, ORT GenAI builder): ``/model/layers.0/self_attn/q_proj/MatMul``
   lies in ``model``, ``model.layers.0``, ``model.layers.0.self_attn``, ``model.layers.0.self_attn.q_proj``.
2. A floating-point value produced inside a scope and consumed outside it (or a graph output) is a boundary value
   of that scope. A scope's output is its primary boundary value: the first output of the last node that produces
   one (earlier ones are exporter artefacts, such as a mask computed in layer 0 and reused by layer 1). Its site is
   ``<scope>:out``. One value can be the output of several nested scopes (``o_proj`` and ``self_attn``) and then
   gets one record per scope. Consumers without any scope information are ignored by this rule.
3. Graph outputs are the root module's outputs: ``:out.<output name>`` (``logits`` -> ``:out.logits``).
4. Rename rules rewrite whole dot-separated components of module paths (``attn=self_attn``); a rule whose
   replacement is ``-`` drops the mapping of matching scopes.
5. With a reference site list (a PyTorch dump's sites), a scope's output takes the reference's own form (``:out``,
   ``:out.0`` or its only ``:out.<field>``); when the reference has ``:out.0`` ... ``:out.<n-1>`` and the scope has
   exactly n boundary values, they are mapped in production order (a module returning a tuple).
6. With a reference site list, a scope whose module takes one tensor alone (the reference has ``<scope>:in.args.0``
   and no other ``<scope>:in.*`` site: a Linear, a norm, an activation) gets its input too: when exactly one
   captured floating-point value is produced outside the scope and consumed inside it, that value is also recorded
   as ``<scope>:in.args.0``, so a replay can run the reference module on the ONNX candidate's own input.
7. Every other value keeps its ONNX value name as its site.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field

from protocol import CaptureError

NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
DROP = "-"
#: Default rename rules for models written by the ORT GenAI builder, next to Hugging Face Llama-style names.
#: The builder fuses each residual add into the next layer's SkipLayerNorm, so its ``layers.N`` scope outputs are
#: not the layer outputs: they are dropped rather than paired wrongly.
GENAI_BUILDER_RENAMES = (r"attn=self_attn", r"^model\.layers\.\d+$=-",
                         r"^model\.layers\.\d+\.final_norm_layernorm$=model.norm")

_FLOAT_ELEM_TYPES = frozenset({1, 10, 11, 16, 17, 18, 19, 20})  # float, f16, f64, bf16, float8 variants


@dataclass(frozen=True)
class RenameRule:
    """``OLD=NEW``: OLD is a regex matched on whole dot-separated components of a module path."""

    old: str
    new: str
    regex: re.Pattern = field(compare=False, repr=False, default=None)

    def apply(self, path: str) -> str | None:
        """The renamed path, or None when the rule drops it."""
        if not self.regex.search(path):
            return path
        if self.new == DROP:
            return None
        return self.regex.sub(self.new, path)


def parse_rename(text: str) -> RenameRule:
    """Parse ``OLD=NEW`` (e.g. ``attn=self_attn``; ``^model\\.layers\\.\\d+$=-`` drops those scopes).

    Raises:
        ValueError: no ``=``, an empty OLD, or an invalid regex.
    """
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise ValueError(f"invalid rename rule {text!r}; write OLD=NEW, e.g. attn=self_attn")
    try:
        # component boundaries: preceded by the start or a dot, followed by the end or a dot
        regex = re.compile(rf"(?<![^.])(?:{old})(?![^.])")
    except re.error as exc:
        raise ValueError(f"invalid regex {old!r} in rename rule {text!r}: {exc}") from None
    return RenameRule(old, new, regex)


def load_rename_rules(items: list[str] | tuple[str, ...] | None) -> list[RenameRule]:
    """Rules from CLI values: each is ``OLD=NEW`` or ``@FILE`` (one rule a line; ``#`` starts a comment).

    Raises:
        CaptureError: an unreadable file or an invalid rule (naming the file and line).
    """
    rules: list[RenameRule] = []
    for item in items or ():
        if item.startswith("@"):
            path = item[1:]
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except OSError as exc:
                raise CaptureError(f"cannot read the rename file ({exc.strerror})", path) from None
            for number, line in enumerate(lines, 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    try:
                        rules.append(parse_rename(line))
                    except ValueError as exc:
                        raise CaptureError(f"line {number}: {exc}", path) from None
        else:
            try:
                rules.append(parse_rename(item))
            except ValueError as exc:
                raise CaptureError(str(exc), hint="see 'parity capture onnx --help' for the rule syntax") from None
    return rules


def node_scopes(node) -> list[str] | None:
    """The module paths a node lies in, outermost first (the root ``""`` excluded); None when unknown."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            # ['', 'model', 'model.layers.0', ..., '<fx node name>']: drop the root and the node itself
            return [s for s in scopes[:-1] if s]
    if node.name.startswith("/"):
        parts = [p for p in node.name.strip("/").split("/")[:-1] if p]
        return [".".join(parts[:i + 1]) for i in range(len(parts))]
    return None


@dataclass
class ValueSites:
    """Where one ONNX value goes in the dump: one or more sites, plus the scope it was produced in."""

    value: str
    sites: list[str]
    scope: str
    mapped: bool


def map_value_sites(graph, values: list[str], graph_outputs: list[str], *, rename: list[RenameRule] | None = None,
                    reference_sites: set[str] | None = None, elem_types: dict[str, int] | None = None
                    ) -> dict[str, ValueSites]:
    """Sites for ``values`` (captured intermediates and graph outputs) of ``graph``.

    Args:
        graph: the onnx GraphProto (node order is execution order).
        values: names of the values that will be recorded.
        graph_outputs: the model's own outputs (not the injected ones).
        rename: rename rules applied to module paths.
        reference_sites: sites of a reference dump, to take its form for single-output scopes (rule 5).
        elem_types: ONNX element type per value (0 or missing = unknown, treated as floating point).

    Returns:
        ``{value name: ValueSites}`` for every name in ``values``.
    """
    rename = rename or []
    elem_types = elem_types or {}
    wanted = set(values)
    outputs = list(graph_outputs)
    producer_scopes: dict[str, list[str]] = {}
    order: dict[str, tuple[int, int]] = {}  # value -> (node index, output index)
    consumers: dict[str, list[list[str] | None]] = {}
    for index, node in enumerate(graph.node):
        scopes = node_scopes(node)
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(scopes)
        for slot, name in enumerate(node.output):
            if name:
                producer_scopes[name] = scopes or []
                order[name] = (index, slot)
    # scope -> its output values in production order
    scope_outputs: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.output:
            if name not in wanted or elem_types.get(name, 0) not in _FLOAT_ELEM_TYPES | {0}:
                continue
            chain = producer_scopes.get(name, [])
            users = [c for c in consumers.get(name, []) if c is not None]
            for scope in chain:
                if name in outputs or any(scope not in used for used in users):
                    scope_outputs.setdefault(scope, []).append(name)
    sites: dict[str, list[str]] = {v: [] for v in values}
    for scope, names in scope_outputs.items():
        path = _renamed(scope, rename)
        if path is None:
            continue
        for name, site in _scope_sites(path, names, order, reference_sites):
            sites[name].append(site)
    if reference_sites:
        for name, site in _leaf_inputs(graph, wanted, producer_scopes, elem_types, rename, reference_sites):
            sites[name].append(site)  # after the producer's output: the order a PyTorch capture records them
    for name in outputs:
        if name in sites:  # last: the root module's post-hook fires after its children's
            sites[name].append(f":out.{name}")
    result = {}
    for v in values:
        chain = producer_scopes.get(v) or []
        mapped = bool(sites[v])
        result[v] = ValueSites(v, sites[v] if mapped else [v], chain[-1] if chain else "", mapped)
    return result


def _leaf_inputs(graph, wanted: set, producer_scopes: dict, elem_types: dict, rename: list,
                 reference_sites: set[str]):
    """``(value, "<scope>:in.args.0")`` for the scopes of rule 6: one floating-point input from outside."""
    single = {}
    for site in reference_sites:
        module, _, rest = site.partition(":in.")
        if rest:
            single.setdefault(module, set()).add(rest)
    single = {m for m, args in single.items() if args == {"args.0"}}
    inputs: dict[str, list[str]] = {}  # renamed scope -> values it consumes from outside, in first-use order
    for node in graph.node:
        for scope in node_scopes(node) or []:
            path = _renamed(scope, rename)
            if path is None or path not in single:
                continue
            for name in node.input:
                if (name in wanted and scope not in producer_scopes.get(name, [scope])
                        and elem_types.get(name, 0) in _FLOAT_ELEM_TYPES | {0}
                        and name not in inputs.setdefault(path, [])):
                    inputs[path].append(name)
    return [(names[0], f"{path}:in.args.0") for path, names in inputs.items() if len(names) == 1]


def _scope_sites(path: str, names: list[str], order: dict, reference_sites: set[str] | None):
    """Sites for the boundary values of one scope (rules 2 and 5)."""
    fields = sorted(s for s in reference_sites if s.startswith(f"{path}:out")) if reference_sites else []
    if len(names) > 1 and len(fields) == len(names) and fields == [f"{path}:out.{i}" for i in range(len(names))]:
        return list(zip(names, fields))  # a tuple-returning module, e.g. rotary embeddings' (cos, sin)
    # the primary output: the first output of the last node producing a boundary value; earlier boundary
    # values are exporter artefacts (masks or rotary tables computed once and reused by later layers)
    last_node = max(order[n][0] for n in names)
    primary = min((n for n in names if order[n][0] == last_node), key=lambda n: order[n][1])
    site = (_reference_form(path, reference_sites) if reference_sites else None) or f"{path}:out"
    return [(primary, site)]


def _renamed(path: str, rules: list[RenameRule]) -> str | None:
    for rule in rules:
        path = rule.apply(path)
        if path is None:
            return None
    return path


def _reference_form(path: str, reference_sites: set[str]) -> str | None:
    if f"{path}:out" in reference_sites:
        return f"{path}:out"
    if f"{path}:out.0" in reference_sites:
        return f"{path}:out.0"
    fields = [s for s in reference_sites if s.startswith(f"{path}:out.")]
    return fields[0] if len(fields) == 1 else None


def reference_sites_of(dump_path: str | os.PathLike) -> set[str]:
    """The set of sites recorded in a dump (e.g. the PyTorch reference), for rule 5."""
    from protocol import open_dump
    with open_dump(dump_path) as reader:
        return {r.key.site for r in reader.records()}
