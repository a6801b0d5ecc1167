"""The model zoo of the capture tests: a tiny model of each family a user meets, built offline from a config.

Each entry gives the model (random weights, a fixed seed), one input sample of the arrays its forward takes, and the
module to plant a fault in: a module in the middle of the network (not an embedding, whose tied weights would make
the fault appear at the input). Families whose config does not build in the installed transformers are skipped by
the test with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SEQ = 10
VOCAB = 128


@dataclass(frozen=True)
class ZooModel:
    """One family: how to build its tiny model, the arrays it takes, and where a fault is planted."""

    family: str
    kind: str  # decoder, moe, ssm, encoder, encoder-decoder, speech, vision
    build: Callable[[], object]
    inputs: Callable[[np.random.Generator], dict]
    fault: tuple[str, ...]  # module path of the planted fault: the first of these that the model has (module
    # names move between transformers releases: ViT's encoder.layer.N.output.dense became layers.N.mlp.fc2 in 5.x)

    def fault_module(self, model) -> str:
        names = dict(model.named_modules())
        found = [p for p in self.fault if p in names]
        if not found:
            raise KeyError(f"{self.family}: none of {self.fault} is a module of {type(model).__name__}")
        return found[0]


def _tokens(rng, *names):
    ids = rng.integers(4, VOCAB, size=(1, SEQ), dtype=np.int64)
    out = {"input_ids": ids}
    if "attention_mask" in names:
        out["attention_mask"] = np.ones_like(ids)
    if "token_type_ids" in names:
        out["token_type_ids"] = np.zeros_like(ids)
    if "decoder_input_ids" in names:
        out["decoder_input_ids"] = rng.integers(4, VOCAB, size=(1, SEQ // 2), dtype=np.int64)
    return out


def _model(config_name: str, model_name: str, **config):
    """A builder: ``transformers.<model_name>(<config_name>(**config))`` with a fixed seed, in eval mode."""
    def build():
        import torch
        import transformers
        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(**config)
        model = getattr(transformers, model_name)(cfg)
        with torch.no_grad():  # a larger std than the default init, so activations are not nearly constant
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.15)
        return model.eval()
    return build


_DEC = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def _pixels(size=32):
    return lambda rng: {"pixel_values": rng.standard_normal((1, 3, size, size)).astype(np.float32)}


ZOO = [
    ZooModel("gpt2", "decoder", _model("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=32, n_layer=3,
                                       n_head=4, n_positions=64),
             lambda rng: _tokens(rng, "attention_mask"), ("transformer.h.1.mlp.c_proj",)),
    ZooModel("llama", "decoder", _model("LlamaConfig", "LlamaForCausalLM", **_DEC),
             lambda rng: _tokens(rng, "attention_mask"), ("model.layers.1.mlp.down_proj",)),
    ZooModel("mistral", "decoder", _model("MistralConfig", "MistralForCausalLM", **_DEC),
             lambda rng: _tokens(rng, "attention_mask"), ("model.layers.1.self_attn.o_proj",)),
    ZooModel("qwen3", "decoder", _model("Qwen3Config", "Qwen3ForCausalLM", head_dim=8, **_DEC),
             lambda rng: _tokens(rng, "attention_mask"), ("model.layers.1.mlp.up_proj",)),
    ZooModel("gemma2", "decoder", _model("Gemma2Config", "Gemma2ForCausalLM", head_dim=8, **_DEC),
             lambda rng: _tokens(rng, "attention_mask"), ("model.layers.1.mlp.down_proj",)),
    ZooModel("phi3", "decoder", _model("Phi3Config", "Phi3ForCausalLM", pad_token_id=0, **_DEC),
             lambda rng: _tokens(rng, "attention_mask"), ("model.layers.1.mlp.down_proj",)),
    ZooModel("falcon", "decoder", _model("FalconConfig", "FalconForCausalLM", vocab_size=VOCAB, hidden_size=32,
                                         num_hidden_layers=3, num_attention_heads=4),
             lambda rng: _tokens(rng, "attention_mask"), ("transformer.h.1.mlp.dense_4h_to_h",)),
    ZooModel("bloom", "decoder", _model("BloomConfig", "BloomForCausalLM", vocab_size=VOCAB, hidden_size=32,
                                        n_layer=3, n_head=4),
             lambda rng: _tokens(rng, "attention_mask"), ("transformer.h.1.mlp.dense_4h_to_h",)),
    ZooModel("opt", "decoder", _model("OPTConfig", "OPTForCausalLM", vocab_size=VOCAB, hidden_size=32,
                                      ffn_dim=64, num_hidden_layers=3, num_attention_heads=4, word_embed_proj_dim=32,
                                      max_position_embeddings=64),
             lambda rng: _tokens(rng, "attention_mask"), ("model.decoder.layers.1.fc2",)),
    ZooModel("mixtral", "moe", _model("MixtralConfig", "MixtralForCausalLM", num_local_experts=4,
                                      num_experts_per_tok=2, **_DEC),
             lambda rng: _tokens(rng, "attention_mask"), ("model.layers.1.self_attn.v_proj",)),
    ZooModel("mamba", "ssm", _model("MambaConfig", "MambaForCausalLM", vocab_size=VOCAB, hidden_size=32,
                                    state_size=8, num_hidden_layers=3, expand=2, conv_kernel=4),
             lambda rng: _tokens(rng), ("backbone.layers.1.mixer.out_proj",)),
    ZooModel("bert", "encoder", _model("BertConfig", "BertModel", vocab_size=VOCAB, hidden_size=32,
                                       num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                                       max_position_embeddings=64),
             lambda rng: _tokens(rng, "attention_mask", "token_type_ids"), ("encoder.layer.1.output.dense",)),
    ZooModel("t5", "encoder-decoder", _model("T5Config", "T5ForConditionalGeneration", vocab_size=VOCAB, d_model=32,
                                             d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                                             decoder_start_token_id=0),
             lambda rng: _tokens(rng, "attention_mask", "decoder_input_ids"), ("encoder.block.1.layer.1.DenseReluDense.wo",)),
    ZooModel("whisper", "speech", _model("WhisperConfig", "WhisperForConditionalGeneration", vocab_size=VOCAB,
                                         d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                         decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                         num_mel_bins=16, max_source_positions=8, max_target_positions=32,
                                         decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2),
             lambda rng: {"input_features": rng.standard_normal((1, 16, 16)).astype(np.float32),
                          "decoder_input_ids": rng.integers(4, VOCAB, size=(1, 4), dtype=np.int64)},
             ("model.encoder.layers.1.fc2",)),
    ZooModel("vit", "vision", _model("ViTConfig", "ViTModel", hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8),
             _pixels(), ("layers.1.mlp.fc2", "encoder.layer.1.output.dense")),
    ZooModel("resnet", "vision", _model("ResNetConfig", "ResNetModel", embedding_size=16, hidden_sizes=[16, 32],
                                        depths=[1, 1], layer_type="basic"),
             _pixels(), ("encoder.stages.1.layers.0.layer.1.convolution",)),
]
