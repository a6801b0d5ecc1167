"""``parity ppl DUMP``: perplexity of one dump's logits on its input set (analyze.perplexity.perplexity)."""
from __future__ import annotations

import json

import click

from .params import check_regex


@click.command("ppl")
@click.argument("dump", type=click.Path(dir_okay=False))
@click.option("--inputs", type=click.Path(dir_okay=False), default=None,
              help="The input set the dump consumed; default: found next to the dump.")
@click.option("--logits-site", default=None, callback=check_regex, metavar="REGEX",
              help="Sites holding logits (default ':out.logits').")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def ppl_cmd(dump, inputs, logits_site, as_json) -> None:
    """Perplexity of DUMP's logits over the scored tokens of its input set (token-weighted; strided windows
    score each token once). Word and byte perplexity too when the input set holds the text.

    \b
    Example:
      parity ppl dumps/cpu-fp32.h5 --inputs inputs.h5
    """
    from analyze.pairing import find_input_set, open_side
    from analyze.perplexity import perplexity
    from protocol.errors import ParityError

    side = open_side(dump)
    try:
        inputset = find_input_set([side], inputs)
        if inputset is None:
            raise ParityError("the dump's input set was not found next to it", dump, "pass it with --inputs")
        result = perplexity(side.readers[0], inputset, logit_sites=logits_site)
    finally:
        side.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"perplexity {result.ppl:.6g} over {result.tokens} tokens (NLL sum {result.nll_sum:.6g})")
    if result.word_ppl is not None:
        click.echo(f"word perplexity {result.word_ppl:.6g} ({result.words} words), byte perplexity "
                   f"{result.byte_ppl:.6g} ({result.bytes} bytes), bits per byte {result.bits_per_byte:.6g}")
