"""Planted bring-up faults: the realistic ways a port goes wrong, applied to a loaded transformers decoder, with the
module a localization must name for each. Used by the replay tests, the benchmarks and ``parity demo``.

Each fault changes the model in place (under ``torch.no_grad``) and returns the paths of the modules it broke
(several for ``int8``: every Linear of the layer is faulty, and whichever runs first is the right answer):

- ``int8``: every Linear weight of one layer rounded to int8 (symmetric, per tensor), as a bad quantized build;
- ``heads``: two attention heads swapped in the query projection (a wrong head layout in a conversion);
- ``embedding``: some rows of the token embedding replaced (a corrupted table), rows of tokens the inputs use;
- ``norm``: one layer's input norm weight x1.03 (an off-by-epsilon or a wrong checkpoint);
- ``rope``: the rotary frequencies of a changed ``rope_theta`` (a config mismatch);
- ``activation``: one layer's MLP activation changed to GELU (the wrong ``hidden_act``);
- ``lm_head``: the output projection x1.01.
"""
from __future__ import annotations

FAULTS = ("int8", "heads", "embedding", "norm", "rope", "activation", "lm_head")
FAULT_LAYER = 1
#: the decoder families ``build_model`` makes
ARCHS = ("llama", "phi3")


def build_model(folder: str, arch: str = "llama", *, layers: int = 3) -> str:
    """A random decoder of ``arch`` (hidden 64, vocabulary 256) saved to ``folder``, the model the fault suite is
    measured on (tests/e2e/test_replay_faults.py, bench/zoom_bytes.py). Its weights are drawn larger than the
    default init (std 0.15), so activations are far from constant, as a trained model's are. Returns ``folder``."""
    import torch
    import transformers
    common = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg, cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM)}[arch]
    torch.manual_seed(0)
    model = cls(cfg(**common)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
    model.save_pretrained(folder)
    return folder


def plant(model, fault: str, *, layer: int = FAULT_LAYER, token_ids=None) -> tuple[str, ...]:
    """Apply ``fault`` to ``model`` (a Llama-like decoder: ``model.model.layers``, ``model.lm_head``) and return
    the paths of the modules it broke: a localization must name one of them first.

    Args:
        token_ids: for ``embedding``: the token ids whose rows to corrupt (default: ids 4-11).

    Raises:
        ValueError: an unknown fault, or a model without the module it needs.
    """
    import torch
    decoder = model.model
    block = decoder.layers[layer]
    prefix = f"model.layers.{layer}"
    with torch.no_grad():
        if fault == "int8":
            linears = [(f"{prefix}.{n}", m) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
            for _, m in linears:
                scale = m.weight.abs().max() / 127.0
                m.weight.copy_(torch.round(m.weight / scale) * scale)
            return tuple(name for name, _ in linears)
        if fault == "heads":
            attn = block.self_attn
            name, proj = next(((n, getattr(attn, n)) for n in ("q_proj", "qkv_proj", "c_attn") if hasattr(attn, n)),
                              (None, None))
            if proj is None:
                raise ValueError(f"{type(attn).__name__} has no query projection")
            d = getattr(attn, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
            w = proj.weight
            first = w[0:d].clone()
            w[0:d] = w[d:2 * d]
            w[d:2 * d] = first
            return (f"{prefix}.self_attn.{name}",)
        if fault == "embedding":
            w = decoder.embed_tokens.weight
            ids = torch.as_tensor(token_ids if token_ids is not None else range(4, 12)).reshape(-1).unique()
            gen = torch.Generator().manual_seed(1)
            w[ids] = torch.randn((len(ids), w.shape[1]), generator=gen, dtype=w.dtype) * w.std()
            return ("model.embed_tokens",)
        if fault == "norm":
            block.input_layernorm.weight.mul_(1.03)
            return (f"{prefix}.input_layernorm",)
        if fault == "rope":
            rotary = decoder.rotary_emb
            rotary.inv_freq.copy_(rotary.inv_freq ** 1.1)  # = the frequencies of a larger rope_theta
            return ("model.rotary_emb",)
        if fault == "activation":
            mlp = block.mlp
            name = next((n for n in ("act_fn", "activation_fn", "act") if hasattr(mlp, n)), None)
            if name is None:
                raise ValueError(f"{type(mlp).__name__} has no activation module")
            setattr(mlp, name, torch.nn.GELU())
            return (f"{prefix}.mlp.{name}",)
        if fault == "lm_head":
            model.lm_head.weight.mul_(1.01)
            return ("lm_head",)
    raise ValueError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
