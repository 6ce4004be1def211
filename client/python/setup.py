"""Build hooks for the `attnd` package: generate the gRPC stubs from the wire API at build time.

The metadata lives in pyproject.toml; this file only adds two command hooks:

* build_py: runs grpc_tools.protoc on attnd/v1/attnd.proto and writes
  src/attnd/v1/attnd_pb2.py, attnd_pb2_grpc.py and attnd_pb2.pyi (git-ignored, regenerated on
  every build, so they never go stale) before the usual copy into the build tree. The proto is
  looked up in the repository first (../../proto, i.e. <repo>/proto when building from
  <repo>/client/python), then in the copy ./proto that the sdist hook made.
* sdist: copies the repository's proto into ./proto so the sdist builds on its own.

protoc runs with the include root at proto/, so the generated _pb2_grpc.py already imports
`from attnd.v1 import attnd_pb2`, which is exactly where the package puts it (checked below).
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_REL = os.path.join("attnd", "v1", "attnd.proto")
REPO_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
LOCAL_PROTO_ROOT = os.path.join(HERE, "proto")
OUT_DIR = os.path.join(HERE, "src")


def _find_proto_root() -> str:
    for root in (REPO_PROTO_ROOT, LOCAL_PROTO_ROOT):
        if os.path.isfile(os.path.join(root, PROTO_REL)):
            return root
    raise RuntimeError(
        "attnd: cannot find the wire API %s in %s or %s; build from the repository "
        "(client/python) or from an sdist" % (PROTO_REL, REPO_PROTO_ROOT, LOCAL_PROTO_ROOT))


def generate_stubs() -> None:
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError as exc:  # pragma: no cover - pip installs it from [build-system]
        raise RuntimeError("attnd: grpcio-tools is needed to build (pip install grpcio-tools)") from exc
    proto_root = _find_proto_root()
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        "-I" + proto_root,
        "-I" + well_known,
        "--python_out=" + OUT_DIR,
        "--grpc_python_out=" + OUT_DIR,
        "--pyi_out=" + OUT_DIR,
        os.path.join(proto_root, PROTO_REL),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError("attnd: protoc failed (exit %d) on %s" % (rc, os.path.join(proto_root, PROTO_REL)))
    grpc_file = os.path.join(OUT_DIR, "attnd", "v1", "attnd_pb2_grpc.py")
    with open(grpc_file, encoding="utf-8") as f:
        text = f.read()
    # The generated import must name the package path attnd.v1; rewrite a bare `import attnd_pb2`
    # (what protoc emits when the include root is the proto's own folder) to be safe.
    fixed = re.sub(r"^import attnd_pb2 as", "from attnd.v1 import attnd_pb2 as", text, flags=re.M)
    if "from attnd.v1 import attnd_pb2" not in fixed:
        raise RuntimeError("attnd: unexpected import in generated %s" % grpc_file)
    if fixed != text:
        with open(grpc_file, "w", encoding="utf-8") as f:
            f.write(fixed)
    print("attnd: generated stubs from %s" % os.path.join(proto_root, PROTO_REL), file=sys.stderr)


class build_py(_build_py):
    def run(self):
        generate_stubs()
        super().run()


class sdist(_sdist):
    def run(self):
        src = os.path.join(REPO_PROTO_ROOT, PROTO_REL)
        if os.path.isfile(src):
            dst = os.path.join(LOCAL_PROTO_ROOT, PROTO_REL)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
        elif not os.path.isfile(os.path.join(LOCAL_PROTO_ROOT, PROTO_REL)):
            raise RuntimeError("attnd: no proto to put in the sdist")
        super().run()


setup(cmdclass={"build_py": build_py, "sdist": sdist})
