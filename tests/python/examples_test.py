"""The client's examples run against the daemon and report OK (they check themselves against the
numpy reference)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import attnd
from conftest import REPO

EXAMPLES = REPO / "client" / "python" / "examples"


@pytest.mark.parametrize("script,args", [
    ("decode_loop.py", []),
    ("decode_loop.py", ["--kv-dtype", "float16", "--page-size", "4", "--steps", "3"]),
    ("attach_pool.py", []),
])
def test_example(daemon, script, args):
    # the examples import the same attnd this test does (installed, or the checkout's src/)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(attnd.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--target", daemon.target, *args],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "OK", proc.stdout
