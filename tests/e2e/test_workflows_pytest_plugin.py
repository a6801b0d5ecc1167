"""The parity pytest plugin, run the way users run it: pytest in a subprocess on a generated test file."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

TEST_FILE = '''
def test_decoder(parity_case, parity_check):
    parity_check(parity_case)


def test_signature(parity_expectation):
    parity_expectation({model!r})
'''


def _pytest(folder, env_extra: dict, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env_extra}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(folder), *args, str(folder / "test_user_parity.py")], capture_output=True, text=True,
                          env=env, cwd=str(folder), timeout=600)


@pytest.fixture(scope="module")
def user_project(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("user-project")
    (folder / "test_user_parity.py").write_text(TEST_FILE.format(model=tiny_llama))
    return folder


def _env(tiny_llama, cache, **extra):
    return {"PARITY_MODEL_PATHS": tiny_llama, "PARITY_BATCH_SIZES": "2", "PARITY_SEQ_LENGTHS": "12",
            "PARITY_MAX_NEW_TOKENS": "6", "PARITY_REFERENCE_CACHE": str(cache),
            "PARITY_METRIC_THRESHOLDS": "fms_ce=4,fms_diff_mean=0.005", **extra}


def test_plugin_passes_fp32_vs_fp32_and_caches_the_reference(user_project, tiny_llama, tmp_path):
    cache = tmp_path / "refs"
    done = _pytest(user_project, _env(tiny_llama, cache), "-k", "decoder")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 passed" in done.stdout
    cached = sorted(os.listdir(cache))
    assert [c for c in cached if c.startswith("reference-") and c.endswith(".h5")]
    again = _pytest(user_project, _env(tiny_llama, cache), "-k", "decoder")   # reuses the cached reference
    assert again.returncode == 0 and sorted(os.listdir(cache)) == cached


def test_plugin_fails_on_a_planted_fault_with_the_right_message(user_project, tiny_llama, tmp_path):
    from workflows.demo import plant_fault
    faulty = plant_fault(tiny_llama, str(tmp_path / "faulty"), "model.layers.1.mlp.down_proj.weight", scale=2.0)
    done = _pytest(user_project, _env(tiny_llama, tmp_path / "refs", PARITY_CANDIDATE_PATHS=faulty), "-k", "decoder")
    assert done.returncode == 1, done.stdout[-3000:]
    out = done.stdout
    assert "tokens differ first at sample 0" in out
    assert "fms_diff_mean: failure rate" in out and "> threshold 1.00%" in out and "worst tokens: step" in out


@pytest.mark.slow
def test_plugin_expectation_capture_then_check(user_project, tiny_llama, tmp_path):
    expectations = tmp_path / "expectations"
    env = _env(tiny_llama, tmp_path / "refs", PARITY_EXPECTATIONS_DIR=str(expectations))
    missing = _pytest(user_project, env, "-k", "signature")
    assert missing.returncode == 1 and "--parity-capture-expectation" in missing.stdout
    captured = _pytest(user_project, env, "-k", "signature", "--parity-capture-expectation")
    assert captured.returncode == 0 and len(os.listdir(expectations)) == 1
    assert _pytest(user_project, env, "-k", "signature").returncode == 0
    bf16 = _pytest(user_project, {**env, "PARITY_CANDIDATE_DTYPE": "bfloat16"}, "-k", "signature")
    assert bf16.returncode == 1 and "output signature of" in bf16.stdout and "beyond rtol" in bf16.stdout


def test_plugin_is_inert_without_configuration(tmp_path):
    """Installed but unconfigured: unrelated tests run as before, torch is not imported, warnings stay errors, and a
    parity_case test is skipped with the reason."""
    plain = "def test_plain():\n    import sys\n    assert 'torch' not in sys.modules\n"
    (tmp_path / "test_other.py").write_text(plain)
    (tmp_path / "test_user_parity.py").write_text(TEST_FILE.split("\n\n\ndef test_signature")[0] + "\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), "-W", "error", str(tmp_path)], capture_output=True, text=True,
                          cwd=str(tmp_path), env={k: v for k, v in os.environ.items() if not k.startswith("PARITY_")},
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 passed, 1 skipped" in done.stdout and "set PARITY_MODEL_PATHS" in done.stdout
