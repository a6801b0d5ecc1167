"""``parity kl DUMP DUMP [DUMP...]``: pairwise KL divergence of several dumps' logits (analyze.kl.pairwise_kl)."""
from __future__ import annotations

import click

from .params import check_regex


@click.command("kl")
@click.argument("dumps", nargs=-1, required=True, type=click.Path(), metavar="DUMP DUMP [DUMP...]")
@click.option("--inputs", type=click.Path(dir_okay=False), default=None,
              help="The input set the dumps consumed (scored positions, delta_p, perplexity).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Write the JSON results here.")
@click.option("--logits-site", default=None, callback=check_regex, metavar="REGEX",
              help="Sites holding logits (default ':out.logits').")
def kl_cmd(dumps, inputs, output, logits_site) -> None:
    """KL divergence between every pair of DUMPs (i < j, the first of each pair is the reference).

    Writes JSON in the KL toolkit's shape (models, kl_divergences {pair: {total, average}}, per-chunk results, a
    summary), plus the llama.cpp statistic block per pair and the toolkit's own quantity under kl_abs_variant.
    Averages are weighted by tokens.

    \b
    Example:
      parity kl dumps/fp32.h5 dumps/int8.h5 dumps/int4.h5 --inputs inputs.h5 -o kl.json
    """
    from analyze.kl import pairwise_kl
    from protocol import atomic_write_json

    if len(dumps) < 2:
        raise click.UsageError("give at least two dumps")
    doc = pairwise_kl(list(dumps), inputs=inputs, logit_sites=logits_site)
    atomic_write_json(output, doc)
    for pair, v in doc["kl_divergences"].items():
        avg = v["average"]
        absv = doc["kl_abs_variant"][pair]["average"]
        click.echo(f"{pair}: KL average {avg:.6e} over {v['tokens']} tokens (kl_abs_variant {absv:.6e})"
                   if avg is not None else f"{pair}: no comparable logits")
    click.echo(f"results: {output}")
