"""``parity agent ROOT --label L``: the capture agent daemon of a shared folder."""
from __future__ import annotations

import logging

import click

from protocol import COMPRESSIONS
from common.console import log_to_stderr, stop_on_signals
from protocol.jobs import BACKENDS

from .options import placement_options


@click.command("agent")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--label", required=True, help="The label this agent captures (jobs name it), e.g. cpu-fp32.")
@click.option("--device", default="cpu", show_default=True, help="Device, unless the job's target says otherwise.")
@click.option("--dtype", default="float32", show_default=True, help="Dtype, unless the job's target says otherwise.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Backend to run instead of the job's default (a job's per-label target still wins).")
@click.option("--provider", default=None, help="ONNX Runtime execution provider (onnx/genai backends).")
@click.option("--attn-implementation", default=None, help="transformers attention implementation (torch backend).")
@placement_options
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
              help="Seconds between scans of ROOT/jobs when idle.")
@click.option("--heartbeat-timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
              help="Take over a running claim whose heartbeat is older than this many seconds.")
@click.option("--heartbeat-interval", type=click.FloatRange(min=0.01), default=None,
              help="Seconds between heartbeats [default: timeout/4, at most 10].")
@click.option("--once", is_flag=True, help="Process what can be claimed now, then exit (tests, cron).")
def agent_cmd(root, label, device, dtype, backend, provider, attn_implementation, device_map, max_memory,
              offload_folder, compression, poll_interval, heartbeat_timeout, heartbeat_interval, once):
    """Capture the jobs of shared folder ROOT that name --label, one at a time, until stopped.

    Each job is claimed exclusively in ROOT/claims/<run>/<label>.json (several agents of one label never capture a
    job twice), heartbeats while it runs, and its dump appears as ROOT/dumps/<run>/<label>.h5. A claim whose
    heartbeat is older than --heartbeat-timeout is taken over (as <label>.attempt<n>.json); an agent that was
    paused meanwhile can then neither publish its dump nor touch the new claim. SIGTERM abandons the running job
    cleanly (its claim says "abandoned"; a restarted agent resumes it). Refuses a folder without exclusive
    creation, hard links or atomic renames (exit code 3). One log line per job. A torch model too big for this
    host's device loads with --device-map (the job's target may set device_map and max_memory too); --max-memory
    and --offload-folder describe this host and apply whenever a device map does.

    \b
    Example:
      parity agent /mnt/parity --label cpu-bf16 --device cpu --dtype bfloat16
    """
    from capture.agent import Agent, AgentSettings
    log_to_stderr("capture.agent")
    agent = Agent(AgentSettings(root=root, label=label, device=device, dtype=dtype, backend=backend,
                                provider=provider, attn_implementation=attn_implementation, device_map=device_map,
                                max_memory=max_memory, offload_folder=offload_folder, compression=compression,
                                poll_interval=poll_interval, heartbeat_timeout=heartbeat_timeout,
                                heartbeat_interval=heartbeat_interval, once=once))
    with stop_on_signals(agent.handle_signal):
        agent.run()
    logging.getLogger("capture.agent").info("agent stopped: %d job(s) done, %d failed", agent.processed,
                                            agent.failed)
