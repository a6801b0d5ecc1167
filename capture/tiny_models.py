"""Tiny Hugging Face models and a tokenizer built offline from configs, with fixed seeds (no hub, no downloads).

Used by the demo and the tests of every package. Everything is deterministic: the same arguments give the same
files (weights, config, tokenizer) byte for byte, in well under two seconds each.
"""
from __future__ import annotations

import functools
import os

VOCAB_SIZE = 1000
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3: unk, bos, eos, pad
_LICENSES = "/usr/share/common-licenses"


def corpus_text() -> str:
    """Local English text for training tokenizers and building input sets (~1 MB, always available offline).

    The files in /usr/share/common-licenses (sorted by name) followed by the standard library's pydoc topics; the
    topics alone when the licenses folder is missing.
    """
    parts = []
    if os.path.isdir(_LICENSES):
        for name in sorted(os.listdir(_LICENSES)):
            path = os.path.join(_LICENSES, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as fh:
                    parts.append(fh.read())
    from pydoc_data.topics import topics
    parts.extend(topics[k] for k in sorted(topics))
    return "\n\n".join(parts)


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    """Train a byte-level BPE on corpus_text() once per process; returns the tokenizer's JSON."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    # like Llama's tokenizer: a BOS in front of every encoded text
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[
        ("<s>", tok.token_to_id("<s>"))])
    return tok.to_str()


def build_tokenizer(folder: str, *, vocab_size: int = VOCAB_SIZE):
    """Train (once per process) a byte-level BPE tokenizer on local text and save it with ``save_pretrained``.

    Args:
        folder: where tokenizer.json and tokenizer_config.json go (created if missing).
        vocab_size: vocabulary size, special tokens included.

    Returns:
        The ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(vocab_size)),
                                  unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    os.makedirs(folder, exist_ok=True)
    tok.save_pretrained(folder)
    return tok


def _reinit(model, seed: int, std: float) -> None:
    """Re-draw every 2-D weight from normal(0, std) so that logits are far from uniform (as a trained model's)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _build(model_class, cfg, folder: str, *, seed: int, std: float, tokenizer: bool) -> str:
    """Instantiate ``model_class(cfg)`` with fixed seeds, re-initialise its weights, save it (and the tokenizer)."""
    import torch
    torch.manual_seed(seed)
    model = model_class(cfg).eval()
    _reinit(model, seed, std)
    os.makedirs(folder, exist_ok=True)
    _save(model, folder)
    if tokenizer:
        build_tokenizer(folder, vocab_size=cfg.vocab_size)
    return folder


def _save(model, folder: str) -> None:
    """save_pretrained without transformers' progress bar (these models are tiny; the bar is noise in a demo)."""
    from transformers.utils import logging as hf_logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def build_tiny_llama(folder: str, *, seed: int = 0, num_layers: int = 2, hidden: int = 64, vocab: int = VOCAB_SIZE,
                     heads: int = 4, kv_heads: int = 2, intermediate: int | None = None, max_positions: int = 2048,
                     std: float = 0.15, tokenizer: bool = True) -> str:
    """Build a random ``LlamaForCausalLM`` from a config and save it (safetensors, fp32) with a tokenizer.

    Args:
        folder: output folder (created).
        seed: fixes every weight.
        num_layers, hidden, vocab, heads, kv_heads, intermediate (default 2*hidden), max_positions: the config.
        std: std of the re-initialised 2-D weights.
        tokenizer: also save the local BPE tokenizer (its vocabulary must be ``vocab``).

    Returns:
        ``folder``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                      tie_word_embeddings=False)
    return _build(LlamaForCausalLM, cfg, folder, seed=seed, std=std, tokenizer=tokenizer)


def build_tiny_bert(folder: str, *, seed: int = 0, num_layers: int = 2, hidden: int = 64, vocab: int = VOCAB_SIZE,
                    heads: int = 4, intermediate: int | None = None, max_positions: int = 512, std: float = 0.15,
                    tokenizer: bool = True) -> str:
    """Build a random ``BertModel`` (encoder) from a config and save it with a tokenizer (see build_tiny_llama)."""
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                     intermediate_size=intermediate or 2 * hidden, max_position_embeddings=max_positions,
                     pad_token_id=3)
    return _build(BertModel, cfg, folder, seed=seed, std=std, tokenizer=tokenizer)
