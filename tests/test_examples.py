"""The examples under examples/, run at a tiny size.

examples/causal_lm.py: a causal LM of DynamicConv1d blocks trained on the stdlib docstrings; its
loss must fall and its step-by-step generation must equal the full forward's, token for token.
"""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

import convbert_kernels

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# seconds on CPU; one thread: the tensors are tiny, intra-op threads only add synchronisation
TINY = ["--dim", "32", "--layers", "2", "--heads", "4", "--kernel-sizes", "3,7", "--seq-len", "32",
        "--batch-size", "16", "--lr", "3e-3", "--eval-windows", "32", "--log-every", "20", "--threads", "1",
        "--seed", "0"]


def _load(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def causal_lm():
    return _load("causal_lm")


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_causal_lm_learns_and_step_equals_full(causal_lm, backend, tmp_path):
    # the native extension must load here (its build is part of the set-up): a failure, not a skip
    assert backend in convbert_kernels.available_backends("cpu"), convbert_kernels.backend_load_error(backend)
    m = causal_lm.main([*TINY, "--steps", "60", "--backend", backend, "--generate", "40",
                        "--out-dir", str(tmp_path)])
    # the loss falls: from about log(vocab) (~4.6) by more than a nat on text it never trained on
    assert m["initial_held_out_loss"] > math.log(m["vocab_size"]) - 0.2
    assert m["final_held_out_loss"] < m["initial_held_out_loss"] - 1.0, m
    assert len(m["train_losses"]) == 60 and sum(m["train_losses"][-10:]) < sum(m["train_losses"][:10])
    # step() by step() generation is the full forward on the growing prefix
    assert len(m["generated_ids"]) == 40 and m["generated_ids"] == m["full_forward_ids"]
    assert m["first_mismatch"] is None
    assert m["max_logit_diff"] < 1e-4
    assert m["step_equals_full"] is True
    assert len(m["generated_text"]) == 40
    assert (tmp_path / "metrics.json").is_file()


def test_causal_lm_sampling_is_seeded_and_matches(causal_lm):
    argv = [*TINY, "--steps", "5", "--backend", "eager", "--generate", "30", "--temperature", "1.0", "--out-dir", ""]
    first, second = causal_lm.main(argv), causal_lm.main(argv)
    assert first["step_equals_full"] and first["generated_ids"] == first["full_forward_ids"]
    assert first["generated_ids"] == second["generated_ids"]  # deterministic: seeded training and sampling
    assert first["train_losses"] == second["train_losses"]


def test_causal_lm_catches_a_wrong_step(causal_lm, monkeypatch):
    """The check can fail: a step() that forgets its state (sees only the new token) is caught."""
    real_step = convbert_kernels.DynamicConv1d.step

    def forgetful_step(self, x_t, state=None, query_t=None):
        y_t, new_state = real_step(self, x_t, None, query_t)
        return y_t, new_state

    monkeypatch.setattr(convbert_kernels.DynamicConv1d, "step", forgetful_step)
    m = causal_lm.main([*TINY, "--steps", "0", "--backend", "eager", "--generate", "20", "--out-dir", ""])
    assert not m["step_equals_full"]
    assert m["max_logit_diff"] > 1e-3


def test_causal_lm_script_runs(tmp_path):
    """``python examples/causal_lm.py`` as a script: exit status 0 when step == full."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "causal_lm.py"), *TINY, "--steps", "3", "--generate", "8",
                           "--backend", "eager", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step == full" in proc.stdout and (tmp_path / "metrics.json").is_file()
