"""``parity demo``: the main job on a tiny built-in Llama, offline (workflows.demo.run_demo)."""
from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Parent folder; each run goes to a new run-<time> sub-folder (nothing is overwritten).")
@click.option("--samples", type=click.IntRange(min=1), default=4, show_default=True, help="Input samples.")
@click.option("--tokens", type=click.IntRange(min=8), default=128, show_default=True, help="Tokens per sample.")
def demo_cmd(out, samples, tokens) -> None:
    """Build a small Llama from a config (fixed seeds), an input set from bundled text, capture a CPU float32
    reference, a CPU bfloat16 candidate and the model with one planted faulty layer in float32 and in bfloat16,
    compare each with the reference (replaying every module on the reference model: where is error introduced
    beyond the candidate's precision?), print the summaries, and write JSON and HTML reports.

    Needs the torch extra (pip install 'tensorparity[torch]'). Exit code 0 when the demo ran (the candidates are
    expected to diverge), 3 when it could not.

    \b
    Example:
      parity demo --out demo-out
    """
    from workflows.demo import FAULT_TENSOR, run_demo

    result = run_demo(out, samples=samples, tokens=tokens, echo=lambda line: click.echo(line, err=True))
    for c in result.comparisons:
        click.echo("")
        click.echo(f"== cpu-fp32 vs {c.name} ==")
        fails = [line for line in c.summary if line.startswith(("FAIL", "ERROR"))]
        for line in fails[:3]:
            click.echo(line)
        if len(fails) > 3:
            click.echo(f"... {len(fails) - 3} more sites over tolerance (see the report)")
        for line in c.summary:
            if not line.startswith(("FAIL", "ERROR")):
                click.echo(line)
        click.echo(f"report: {c.json}")
        click.echo(f"html:   {c.html}")
    click.echo("")
    click.echo(f"planted fault: {FAULT_TENSOR}")
    click.echo(f"everything is in {result.folder}")
