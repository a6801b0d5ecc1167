"""``parity inputs text`` and ``parity inputs tokens``: input sets from a corpus or from explicit arrays."""
from __future__ import annotations

import click


def _write(input_set, output: str) -> None:
    from protocol import write_input_set
    sha = write_input_set(output, input_set.samples, input_set.provenance)
    lengths = [s.arrays["input_ids"].shape[-1] for s in input_set.samples if "input_ids" in s.arrays]
    span = f", {min(lengths)}-{max(lengths)} tokens each" if lengths else ""
    click.echo(f"wrote {output}: {len(input_set.samples)} samples{span}, sha256 {sha[:16]}")


@click.command("text")
@click.argument("tokenizer")
@click.option("--text-file", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 corpus to tokenize [default: Wikitext-2 test through 'datasets'].")
@click.option("-n", "--tokens", "chunk_tokens", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Tokens per sample (disjoint chunks), or the window length with --stride.")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="Strided windows every STRIDE tokens; each scores only tokens no earlier window scored.")
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Keep the first N samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded in the provenance.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Input set to write.")
def text_cmd(tokenizer, text_file, chunk_tokens, stride, max_samples, seed, output):
    """Tokenize a corpus once with TOKENIZER (a folder holding tokenizer.json, e.g. the model folder) and cut it
    into samples of input_ids and attention_mask, with score_from and text metadata for perplexity.

    For models that take other inputs (pixel_values, input_features, decoder_input_ids, token_type_ids...), save
    the arrays in an .npz and use 'parity inputs tokens'; token_type_ids (zeros) and position_ids (0..L-1) that a
    model takes are derived at capture.

    \b
    Example:
      parity inputs text ./tiny-llama --text-file /usr/share/common-licenses/GPL-3 -n 256 --max-samples 4 \\
          -o inputs.h5
    """
    from capture.text_inputs import build_text_input_set
    _write(build_text_input_set(tokenizer, text_file=text_file, chunk_tokens=chunk_tokens, stride=stride,
                                max_samples=max_samples, seed=seed), output)


@click.command("tokens")
@click.argument("npz", type=click.Path(dir_okay=False))
@click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Keep the first N samples.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Input set to write.")
def tokens_cmd(npz, max_samples, output):
    """Make an input set from the arrays of NPZ: batched ([N, ...] arrays, one sample per row) or per sample
    (arrays named <name>.<i>). An attention_mask of ones is added when input_ids has none.

    Arrays keep their names and dtypes, so this builds the inputs of any model: name each array after the model
    input it feeds (pixel_values, input_features, decoder_input_ids, token_type_ids, position_ids...). Inputs are
    never cast: save floats as the model's dtype (float32 for most ONNX exports). At capture, an input the model
    does not take is left out when it carries no information (an all-ones attention_mask, position_ids 0..L-1,
    all-zero token_type_ids) and refused otherwise; one it takes but the set lacks is derived from those defaults.

    \b
    Example:
      python -c "import numpy as np; np.savez('ids.npz', input_ids=np.arange(64).reshape(2, 32))"
      parity inputs tokens ids.npz -o inputs.h5
    \b
    Images, audio features, encoder-decoder and two-segment inputs:
      python -c "import numpy as np; np.savez('img.npz', pixel_values=np.zeros((2, 3, 224, 224), np.float32))"
      python -c "import numpy as np; np.savez('asr.npz', input_features=np.zeros((1, 80, 3000), np.float32),
          decoder_input_ids=np.array([[50258, 50259, 50359]]))"
      python -c "import numpy as np; np.savez('pair.npz', input_ids=np.arange(8)[None],
          token_type_ids=np.array([[0, 0, 0, 0, 1, 1, 1, 1]]))"
      parity inputs tokens img.npz -o images.h5
    """
    from capture.token_inputs import build_token_input_set
    _write(build_token_input_set(npz, max_samples=max_samples), output)
