"""``parity inputs random MODEL.onnx -o inputs.h5``: an input set drawn from an ONNX model's input spec."""
from __future__ import annotations

import click


@click.command("random")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Input set to write.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a named dynamic dim. Repeatable.")
@click.option("--int-range", "int_ranges", multiple=True, metavar="INPUT=LO:HI",
              help="Integer input values in [LO, HI) (default 0:100). Repeatable.")
@click.option("--float-range", "float_ranges", multiple=True, metavar="INPUT=LO:HI",
              help="Float input values in [LO, HI) (default -1:1). Repeatable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i is drawn from seed (seed, i).")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Number of samples.")
def random_inputs_cmd(model, output, dims, int_ranges, float_ranges, seed, samples):
    """Draw random inputs for ONNX model MODEL from its input spec and write them as an input set, so that every
    backend sees identical inputs. Every named dynamic dim needs a --dim. Random token ids are not text: to pair
    with a PyTorch capture on real tokens or on given arrays (pixel_values, input_features, decoder_input_ids...),
    build the set with 'parity inputs text' or 'parity inputs tokens' instead.

    \b
    Example:
      parity inputs random model.onnx --dim batch=1 --dim sequence=128 \\
          --int-range input_ids=0:32000 --float-range pixel_values=-1:1 --seed 0 --samples 4 -o inputs.h5
    """
    from capture.random_inputs import RandomInputOptions, parse_dim, parse_range, write_random_inputs
    try:
        options = RandomInputOptions(dims=dict(parse_dim(d) for d in dims),
                                     int_ranges=dict(parse_range(r, int) for r in int_ranges),
                                     float_ranges=dict(parse_range(r, float) for r in float_ranges),
                                     seed=seed, samples=samples)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    sha, specs = write_random_inputs(model, output, options)
    shapes = ", ".join(f"{s.name} {s.dtype.name}{list(s.shape)}" for s in specs)
    click.echo(f"wrote {output}: {samples} sample(s) of {shapes}; sha256 {sha[:12]}")
