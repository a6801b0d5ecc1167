"""tensorparity's pytest plugin (entry point ``pytest11``: ``parity``): decoder parity tests and expectations.

Installed with tensorparity, it costs nothing in unrelated test runs: loading it imports only ``os`` (and pytest,
already loaded) and declares
options whose names all start with ``--parity-`` / ``parity_``; the fixtures import the capture and analysis code
(and torch) only when a test asks for them. Disable it with ``-p no:parity``.

Decoder parity (workflows/decoder_parity.py)::

    # test_parity.py
    def test_decoder(parity_case, parity_check):
        parity_check(parity_case)

``parity_case`` is parametrized over every (model, batch size, sequence length, max new tokens) of the
configuration; ``parity_check`` asserts token equality first, then teacher-forced ``fms_ce``/``fms_diff_mean``
failure rates. Configuration: environment variables ``PARITY_<NAME>`` win over ini options ``parity_<name>``:

    MODEL_PATHS, CANDIDATE_PATHS (comma lists), CANDIDATE_BACKEND (torch|genai), REFERENCE_DEVICE,
    REFERENCE_DTYPE, CANDIDATE_DEVICE, CANDIDATE_DTYPE, BATCH_SIZES, SEQ_LENGTHS, MAX_NEW_TOKENS (comma lists),
    METRIC_THRESHOLDS (fms_ce=2.5,fms_diff_mean=0.001), FAILURE_THRESHOLD (0.01), REFERENCE_CACHE (a directory of
    cached reference dumps), TEXT_FILE, EXPECTATIONS_DIR, EXPECTATION_RTOL (1e-5)

Expectations::

    def test_signature(parity_expectation):
        parity_expectation("path/to/model")   # run once with --parity-capture-expectation to record it
"""
from __future__ import annotations

import os

import pytest

#: option name -> (help, default); env var PARITY_<NAME upper>, ini option parity_<name>.
OPTIONS = {
    "model_paths": ("Reference Hugging Face model folders (comma list).", ""),
    "candidate_paths": ("Candidate models aligned with the model paths (default: the same folders).", ""),
    "candidate_backend": ("Candidate backend: torch or genai.", "torch"),
    "reference_device": ("Reference torch device.", "cpu"),
    "reference_dtype": ("Reference dtype.", "float32"),
    "candidate_device": ("Candidate torch device.", "cpu"),
    "candidate_dtype": ("Candidate dtype.", "float32"),
    "batch_sizes": ("Batch sizes (comma list).", "1"),
    "seq_lengths": ("Prompt lengths (comma list).", "64"),
    "max_new_tokens": ("Generated tokens (comma list).", "8"),
    "metric_thresholds": ("Limits, e.g. fms_ce=2.5,fms_diff_mean=0.001.", ""),
    "failure_threshold": ("Allowed share of tokens over a limit.", "0.01"),
    "reference_cache": ("Directory of cached reference dumps (default: per session).", ""),
    "text_file": ("Text of the prompts (default: a local corpus).", ""),
    "expectations_dir": ("Directory of captured output signatures.", ""),
    "expectation_rtol": ("Relative tolerance of the signature comparison.", "1e-5"),
}


def pytest_addoption(parser):
    """Declare the plugin's options (all prefixed ``--parity-`` / ``parity_``)."""
    group = parser.getgroup("parity", "tensorparity decoder parity tests")
    group.addoption("--parity-capture-expectation", action="store_true", default=False,
                    help="Capture the output signatures of parity_expectation tests instead of checking them.")
    for name, (text, default) in OPTIONS.items():
        parser.addini(f"parity_{name}", f"{text} Env PARITY_{name.upper()}.", default=default)


def _setting(config, name: str) -> str:
    env = os.environ.get(f"PARITY_{name.upper()}")
    return env if env is not None else str(config.getini(f"parity_{name}") or "")


def _split(text: str, kind=str) -> list:
    return [kind(p.strip()) for p in text.split(",") if p.strip()]


def _decoder_config(config):
    from workflows.decoder_parity import DecoderParityConfig, parse_thresholds
    s = lambda n: _setting(config, n)  # noqa: E731
    return DecoderParityConfig(
        model_paths=_split(s("model_paths")), candidate_paths=_split(s("candidate_paths")),
        candidate_backend=s("candidate_backend") or "torch", reference_device=s("reference_device") or "cpu",
        reference_dtype=s("reference_dtype") or "float32", candidate_device=s("candidate_device") or "cpu",
        candidate_dtype=s("candidate_dtype") or "float32", batch_sizes=_split(s("batch_sizes") or "1", int),
        seq_lengths=_split(s("seq_lengths") or "64", int), max_new_tokens=_split(s("max_new_tokens") or "8", int),
        metric_thresholds=parse_thresholds(s("metric_thresholds")),
        failure_threshold=float(s("failure_threshold") or 0.01), reference_cache=s("reference_cache") or None,
        text_file=s("text_file") or None)


def pytest_generate_tests(metafunc):
    """Parametrize ``parity_case`` over every configured case (skipped with a reason when none is configured)."""
    if "parity_case" not in metafunc.fixturenames:
        return
    models = _split(_setting(metafunc.config, "model_paths"))
    if not models:
        metafunc.parametrize("parity_case", [pytest.param(None, marks=pytest.mark.skip(
            reason="no model configured: set PARITY_MODEL_PATHS or the parity_model_paths ini option"))])
        return
    cases = _decoder_config(metafunc.config).cases()
    ids = [f"{os.path.basename(os.path.normpath(m))}-b{b}-s{s}-n{n}" for m, _, b, s, n in cases]
    metafunc.parametrize("parity_case", cases, ids=ids)


@pytest.fixture(scope="session")
def parity_config(pytestconfig):
    """The decoder parity configuration (PARITY_* environment variables over parity_* ini options)."""
    return _decoder_config(pytestconfig)


@pytest.fixture(scope="session")
def _parity_reference_cache(parity_config, tmp_path_factory):
    return parity_config.reference_cache or str(tmp_path_factory.mktemp("parity-reference-cache"))


@pytest.fixture
def parity_check(parity_config, _parity_reference_cache, tmp_path):
    """A callable ``parity_check(case)`` that fails the test, naming the metric, its failure rate, the threshold
    and the worst tokens, when the candidate does not decode like the reference."""
    import dataclasses

    from workflows.decoder_parity import run_case
    cfg = dataclasses.replace(parity_config, reference_cache=_parity_reference_cache)

    def check(case):
        model, candidate, batch, seq, steps = case
        result = run_case(cfg, model, candidate, batch, seq, steps, str(tmp_path))
        if not result.passed:
            pytest.fail(result.message, pytrace=False)
        return result
    return check


@pytest.fixture
def parity_expectation(request, pytestconfig, parity_config, tmp_path):
    """A callable ``parity_expectation(model, name=None)``: with ``--parity-capture-expectation`` it records the
    model's output signature; otherwise it compares the model's signature with the recorded one."""
    import json
    import math
    import re

    from workflows.decoder_parity import output_signature
    folder = _setting(pytestconfig, "expectations_dir") or os.path.join(str(pytestconfig.rootpath),
                                                                         ".parity_expectations")
    rtol = float(_setting(pytestconfig, "expectation_rtol") or 1e-5)

    def check(model, name=None):
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name or request.node.nodeid)
        path = os.path.join(folder, f"{stem}.json")
        sig = output_signature(model, backend=parity_config.candidate_backend,
                               device=parity_config.candidate_device, dtype=parity_config.candidate_dtype,
                               work=str(tmp_path))
        if pytestconfig.getoption("parity_capture_expectation"):
            os.makedirs(folder, exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(sig, fh)
            return path
        if not os.path.exists(path):
            pytest.fail(f"no recorded output signature {path}: run once with --parity-capture-expectation",
                        pytrace=False)
        with open(path, encoding="utf-8") as fh:
            want = json.load(fh)
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(want["sums"], sig["sums"]))
               if not math.isclose(a, b, rel_tol=rtol, abs_tol=rtol)]
        argmax = [i for i, (a, b) in enumerate(zip(want["argmax"], sig["argmax"])) if a != b]
        if len(want["sums"]) != len(sig["sums"]) or bad or argmax:
            worst = max(bad, key=lambda t: abs(t[1] - t[2]), default=None)
            detail = (f"position {worst[0]}: expected {worst[1]:.9g}, got {worst[2]:.9g}" if worst else "")
            pytest.fail(f"output signature of {model} differs from {path}: {len(bad)} of {len(want['sums'])} "
                        f"positions beyond rtol {rtol:g} ({detail}), {len(argmax)} argmax changes",
                        pytrace=False)
        return path
    return check
