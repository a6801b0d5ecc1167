"""Record policy: per site pattern, what to keep of a tensor (full, statistics, a slice, top-k, nothing).

Rules are written ``PATTERN=ACTION`` (first match wins; PATTERN is a regex searched in the site):

    full                 the whole tensor
    stats                statistics only (computed where the tensor lives; only a few numbers move)
    skip                 nothing
    slice:DIM:INDEX      one index along DIM (``slice:-2:-1`` = the last position of [batch, seq, hidden])
    slice:DIM:START:STOP a range along DIM
    topk:K               top-K values and indices along the last dim (logits)
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

ACTIONS = ("full", "stats", "skip", "slice", "topk")


@dataclass(frozen=True)
class Rule:
    """One policy rule. ``params`` holds ``dim``/``start``/``stop`` for slice and ``k`` for topk."""

    pattern: str
    action: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown policy action {self.action!r}; use one of {', '.join(ACTIONS)}")
        re.compile(self.pattern)

    def reduction(self) -> dict:
        """The reduction record stored with a record captured under this rule."""
        return {"kind": self.action, **self.params} if self.action in ("slice", "topk") else {}


def applicable(rule: Rule, shape: tuple, is_bool: bool) -> Rule:
    """The rule, or ``full`` when its reduction cannot apply to a tensor of ``shape`` (a slice along a dim the tensor
    does not have; top-k of a 0-d, empty-last-dim or bool tensor): a record is never labelled reduced while it
    holds the whole tensor."""
    if rule.action == "slice" and not (shape and -len(shape) <= rule.params["dim"] < len(shape)):
        return Rule(rule.pattern, "full")
    if rule.action == "topk" and not (shape and shape[-1] > 0 and not is_bool):
        return Rule(rule.pattern, "full")
    return rule


def parse_action(text: str) -> tuple[str, dict]:
    """Parse ``full`` / ``stats`` / ``skip`` / ``slice:DIM:INDEX`` / ``slice:DIM:START:STOP`` / ``topk:K``."""
    parts = text.strip().split(":")
    action = parts[0]
    try:
        if action in ("full", "stats", "skip") and len(parts) == 1:
            return action, {}
        if action == "topk" and len(parts) == 2 and int(parts[1]) > 0:
            return action, {"k": int(parts[1])}
        if action == "slice" and len(parts) == 3:
            index = int(parts[2])
            return action, {"dim": int(parts[1]), "start": index, "stop": index + 1 if index != -1 else None}
        if action == "slice" and len(parts) == 4:
            stop = None if parts[3] in ("", "end") else int(parts[3])
            return action, {"dim": int(parts[1]), "start": int(parts[2]), "stop": stop}
    except ValueError:
        pass
    raise ValueError(f"invalid policy action {text!r}; use full, stats, skip, slice:DIM:INDEX, "
                     f"slice:DIM:START:STOP or topk:K")


def parse_rule(text: str) -> Rule:
    """Parse ``PATTERN=ACTION`` (a bare ACTION applies to every site)."""
    pattern, sep, action = text.rpartition("=")
    if not sep:
        pattern, action = ".*", text
    name, params = parse_action(action)
    try:
        return Rule(pattern or ".*", name, params)
    except re.error as exc:
        raise ValueError(f"invalid site regex {pattern!r} in policy rule {text!r}: {exc}") from None


@dataclass
class RecordPolicy:
    """What to capture of each site, plus a byte budget for the whole dump.

    Attributes:
        rules: tried in order; the first whose pattern is found in the site decides.
        default: action for sites no rule matches (``full`` or ``stats`` usually).
        byte_budget: once this many bytes of tensor data are queued, further records degrade to statistics (with
            one warning). ``None`` means no limit.
    """

    rules: list[Rule] = field(default_factory=list)
    default: str = "full"
    byte_budget: int | None = None

    def __post_init__(self):
        self._compiled = [(re.compile(r.pattern), r) for r in self.rules]
        self._default = Rule(".*", *parse_action(self.default))
        self._cache: dict[str, Rule] = {}

    def decide(self, site: str) -> Rule:
        """The rule that applies to a site (cached: sites repeat every sample and step)."""
        rule = self._cache.get(site)
        if rule is None:
            rule = next((r for rx, r in self._compiled if rx.search(site)), self._default)
            self._cache[site] = rule
        return rule

    def to_dict(self) -> dict:
        """JSON form, as recorded in the manifest."""
        return {"rules": [asdict(r) for r in self.rules], "default": self.default, "byte_budget": self.byte_budget}

    @classmethod
    def from_dict(cls, data: dict) -> "RecordPolicy":
        """Inverse of ``to_dict``."""
        return cls([Rule(r["pattern"], r["action"], dict(r.get("params") or {})) for r in data.get("rules", [])],
                   data.get("default", "full"), data.get("byte_budget"))

    @classmethod
    def from_strings(cls, rules: list[str], default: str = "full", byte_budget: int | None = None) -> "RecordPolicy":
        """Build from CLI rule strings (``PATTERN=ACTION``)."""
        parse_action(default)
        return cls([parse_rule(r) for r in rules], default, byte_budget)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*$")


def parse_size(text: str) -> int:
    """Parse a byte size such as ``512MB``, ``10G``, ``1.5GiB`` or ``1000`` (binary multiples)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"invalid size {text!r}; use e.g. 512MB or 10GB")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)
