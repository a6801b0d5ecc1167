"""Pairwise KL divergence between several dumps' logits (``parity kl``), in the KL toolkit's JSON shape.

Every pair ``i < j`` is compared with dump ``i`` as the reference. ``kl_divergences[pair]`` holds ``total`` (the
sum of per-token KL over the scored tokens) and ``average`` (``total / tokens``: token-weighted, so a long chunk
counts more than a short one, exactly like a concatenation of all tokens). ``kl_abs_variant`` gives the same two
numbers for Σ p·|log p − log q|, the quantity the Model-Optimizer toolkit reports as "KL", so its users can match
their old numbers. ``chunks`` lists per-record (sample/step) results and ``llama_statistics`` the full llama.cpp
block per pair.
"""
from __future__ import annotations

import datetime as _dt
import os

import numpy as np

from .logit_block import build_logit_site, compare_logit_records, logit_pair_usable
from .logit_metrics import DEFAULT_TOPK
from .pairing import check_pairable, find_input_set, open_side
from .perplexity import logit_records

KL_SCHEMA_VERSION = "1.0"


def _name(side, index: int, used: set) -> str:
    name = side.manifest.label or os.path.splitext(os.path.basename(side.paths[0]))[0] or f"model{index}"
    base, n = name, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    used.add(name)
    return name


def pairwise_kl(paths: list, *, inputs=None, logit_sites: str | None = None, topk: int = DEFAULT_TOPK,
                chunk_elements: int = 1 << 22) -> dict:
    """KL divergences between every pair of dumps (first of each pair = reference).

    Args:
        paths: two or more dumps (each a path, or a list/folder/glob of rank files: rank 0 is used).
        inputs: the input set file, for next-token labels (scored positions, perplexity, delta_p); default: found
            next to the dumps. Without labels every logit row counts.
        logit_sites: regex of the logits sites (default ``:out.logits``).
        topk: k of ``topk_overlap``. chunk_elements: memory bound per block.

    Returns:
        A JSON-ready dict: ``schema_version``, ``models``, ``reference``, ``weighting``, ``kl_divergences``
        {pair: {total, average, tokens}}, ``kl_abs_variant`` {pair: {total, average, tokens}}, ``chunks``
        {pair: [...]}, ``llama_statistics`` {pair: block}, ``summary``.

    Raises:
        ValueError: fewer than two dumps.
        InputSetMismatchError / PairingError: dumps that cannot be paired.
    """
    if len(paths) < 2:
        raise ValueError("pairwise KL needs at least two dumps")
    sides = []
    try:
        for p in paths:
            sides.append(open_side(p))
        for s in sides[1:]:
            check_pairable(sides[0], s)
        inputset = find_input_set(sides, inputs)
        used: set = set()
        names = [_name(s, i, used) for i, s in enumerate(sides)]
        doc = {"schema_version": KL_SCHEMA_VERSION, "tool": "tensorparity parity kl",
               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "models": [{"name": n, "path": os.path.abspath(s.paths[0]), "label": s.manifest.label,
                           "model": s.manifest.model, "device": s.manifest.device, "dtype": s.manifest.dtype}
                          for n, s in zip(names, sides)],
               "reference": names[0],
               "weighting": "token-weighted: average = total / tokens over every scored token of every chunk",
               "inputs": {"path": inputset.path if inputset else None, "sha256": sides[0].manifest.inputs_sha256},
               "kl_definition": "kl = sum p*(log p - log q), KL(first || second) of each pair, natural log",
               "kl_abs_variant_definition": "sum p*|log p - log q| (the Model-Optimizer toolkit's 'KL'); an "
                                            "upper bound of kl",
               "kl_divergences": {}, "kl_abs_variant": {}, "chunks": {}, "llama_statistics": {}}
        for i in range(len(sides)):
            for j in range(i + 1, len(sides)):
                _one_pair(doc, f"{names[i]}_vs_{names[j]}", sides[i], sides[j], inputset, logit_sites, topk,
                          chunk_elements)
        pairs = doc["kl_divergences"]
        scored = [k for k, v in pairs.items() if v["average"] is not None]  # pairs without usable logits have none
        doc["summary"] = {
            "pairs": len(pairs),
            "tokens": {k: v["tokens"] for k, v in pairs.items()},
            "average_kl": {k: v["average"] for k, v in pairs.items()},
            "max_average_kl_pair": max(scored, key=lambda k: pairs[k]["average"]) if scored else None,
            "min_average_kl_pair": min(scored, key=lambda k: pairs[k]["average"]) if scored else None,
        }
        return doc
    finally:
        for s in sides:
            s.close()


def _one_pair(doc, pair, ref_side, cand_side, inputset, logit_sites, topk, chunk_elements) -> None:
    rd, cd = ref_side.readers[0], cand_side.readers[0]
    records = []
    for ri in logit_records(rd, logit_sites):
        if ri.key not in cd:
            continue
        ci = cd.record(ri.key)
        if logit_pair_usable(ri, ci):
            records.append(compare_logit_records(rd, cd, ri, ci, inputset, topk=topk,
                                                 chunk_elements=chunk_elements))
    if not records:
        doc["kl_divergences"][pair] = {"total": None, "average": None, "tokens": 0}
        doc["kl_abs_variant"][pair] = {"total": None, "average": None, "tokens": 0}
        doc["chunks"][pair] = []
        doc["llama_statistics"][pair] = {}
        return
    any_scored = any(r.scored for r in records)
    chunks, kl_tot, abs_tot, n_tot = [], 0.0, 0.0, 0
    for r in records:
        mask = r.scored_mask if any_scored else np.ones(r.tokens, dtype=bool)
        kl = r.per_token["kl"][mask]
        ab = r.per_token["kl_abs_variant"][mask]
        ok = np.isfinite(kl) & np.isfinite(ab)
        kt, at, n = float(kl[ok].sum()), float(ab[ok].sum()), int(ok.sum())
        kl_tot, abs_tot, n_tot = kl_tot + kt, abs_tot + at, n_tot + n
        chunks.append({"key": r.key, "sample": r.sample, "step": r.step, "tokens": n, "kl_total": kt,
                       "kl_average": kt / n if n else None, "kl_abs_variant_average": at / n if n else None,
                       "top1_agree": r.means.get("top1_agree"), "js_average": r.means.get("js")})
    site = build_logit_site(records[0].key.split("/", 2)[2].rsplit("#", 1)[0], records, inputset, topk=topk)
    doc["kl_divergences"][pair] = {"total": kl_tot, "average": kl_tot / n_tot if n_tot else None, "tokens": n_tot}
    doc["kl_abs_variant"][pair] = {"total": abs_tot, "average": abs_tot / n_tot if n_tot else None,
                                   "tokens": n_tot}
    doc["chunks"][pair] = chunks
    doc["llama_statistics"][pair] = site.statistics | ({"perplexity": site.perplexity} if site.perplexity else {})
