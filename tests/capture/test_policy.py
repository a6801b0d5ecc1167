"""Record policy parsing and which rules can apply to which tensors (shared by the torch and ONNX backends)."""
from __future__ import annotations

import pytest

from capture.policy import RecordPolicy, applicable, parse_rule, parse_size


@pytest.mark.parametrize("text, action, params", [
    ("stats", "stats", {}), ("mlp=skip", "skip", {}), (r"logits$=topk:20", "topk", {"k": 20}),
    ("lm_head:in=slice:-2:-1", "slice", {"dim": -2, "start": -1, "stop": None}),
    ("x=slice:1:0:8", "slice", {"dim": 1, "start": 0, "stop": 8}),
])
def test_rules_parse(text, action, params):
    rule = parse_rule(text)
    assert (rule.action, rule.params) == (action, params)


@pytest.mark.parametrize("bad", ["topk:0", "slice:1", "half", "x=topk:k", "(=full"])
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError):
        parse_rule(bad)


@pytest.mark.parametrize("rule, shape, is_bool, action", [
    ("slice:-2:-1", (2, 8, 4), False, "slice"), ("slice:-2:-1", (4,), False, "full"), ("slice:0:0", (), False, "full"),
    ("topk:5", (1, 3, 100), False, "topk"), ("topk:5", (), False, "full"), ("topk:5", (3, 0), False, "full"),
    ("topk:5", (3, 7), True, "full"), ("stats", (), False, "stats"), ("full", (2,), False, "full"),
])
def test_a_reduction_that_cannot_apply_falls_back_to_full(rule, shape, is_bool, action):
    assert applicable(parse_rule(rule), shape, is_bool).action == action


def test_first_matching_rule_wins_and_sizes_parse():
    policy = RecordPolicy.from_strings(["mlp=stats", "layers=skip"], "full", parse_size("1.5GiB"))
    assert [policy.decide(s).action for s in ("model.layers.0.mlp:out", "model.layers.0:out", ":out.logits")] == \
        ["stats", "skip", "full"]
    assert policy.byte_budget == 3 << 29 and parse_size("512MB") == 512 << 20
    assert RecordPolicy.from_dict(policy.to_dict()).to_dict() == policy.to_dict()
