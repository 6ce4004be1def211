"""GPU host only: a Hugging Face transformers Llama (random weights, fixed seed, nothing
downloaded) generating through attnd, against the same model with its own SDPA attention
(examples/hf_llama/generate.py; the tolerance rule is in examples/hf_llama/README.md).

4 layers, hidden 4096, 32 query / 8 KV heads, head_dim 128, MLP 8192, vocab 32000, float16;
prompts of 17, 100 and 333 tokens prefilled together, then 64 greedy tokens each. Prints the
report (tokens equal, logit differences, tokens per second of attnd and of SDPA) whether it passes
or fails. Skips, with the reason, only without torch, without a CUDA device, or without
transformers; fails, saying why, when the installed transformers has no attention interface.

    ATTND_BIN=build/bin/attnd python -m pytest tests/python/gpu_model_test.py -v
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
if not torch.cuda.is_available():
    pytest.skip("torch has no CUDA device", allow_module_level=True)
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from conftest import REPO, make_daemon  # noqa: E402

# by path, under a name of its own (it puts its directory on sys.path for its siblings)
_spec = importlib.util.spec_from_file_location(
    "attnd_hf_llama_generate", REPO / "examples" / "hf_llama" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate  # dataclasses look their module up there
_spec.loader.exec_module(generate)

PROMPTS = (17, 100, 333)
STEPS = 64


@pytest.fixture(scope="module")
def cuda_daemon():
    with tempfile.TemporaryDirectory(prefix="attnd-gpu-model-") as tmp:
        d = make_daemon(Path(tmp), backend="cuda")
        yield d
        d.stop()


def test_llama_generates_through_attnd_like_sdpa(cuda_daemon, capsys):
    start = time.perf_counter()
    lines = []
    try:
        rep = generate.run(cuda_daemon.target, spec=generate.ModelSpec(), prompt_lengths=PROMPTS,
                           steps=STEPS, dtype="float16", device="cuda", log=lines.append)
    except Exception:
        with capsys.disabled():
            print("\n".join(["", "gpu_model_test: the run stopped after:"] + lines
                            + ["--- attnd log (tail) ---", cuda_daemon.log()]))
        raise
    text = rep.text() + f"\n(gpu_model_test took {time.perf_counter() - start:.1f} s)"
    with capsys.disabled():  # the report reaches the log also when the test passes
        print("\n" + text)
    assert rep.ok, text + "\n--- attnd log (tail) ---\n" + cuda_daemon.log()
    assert rep.attnd is not None and rep.attnd.tokens.shape == (len(PROMPTS), STEPS)
