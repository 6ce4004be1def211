"""What the schemas cannot check about the deploy files: the Dockerfile's instructions, the
sidecar pod's wiring, the compose file's namespaces and GPU, the systemd unit, and that every
ATTND_* variable they set is a real flag of the daemon (asked from the built attnd when there).

Run by scripts/lint.sh:  .venv/bin/python -m pytest -q tests/deploy
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import re
import shutil
import subprocess
import sys

import pytest
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import dockerfile  # noqa: E402  (tests/deploy/dockerfile.py)

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S_FILES = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
IMAGE_UID = 10001


# --- helpers -----------------------------------------------------------------------------------

def load_yaml_documents(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def http_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def socket_dir(listen: str) -> str:
    assert listen.startswith("unix:///"), f"expected a unix:///ABSOLUTE socket, got {listen}"
    return posixpath.dirname(listen[len("unix://"):])


@pytest.fixture(scope="session")
def daemon_flags() -> set[str]:
    """The daemon's flag names, from `attnd --helpfull` (its usage: "  --NAME (default: ...)")."""
    binary = os.environ.get("ATTND_BIN", str(REPO / "build" / "bin" / "attnd"))
    if not os.access(binary, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is not built")
        pytest.skip(f"{binary} is not built")
    out = subprocess.run([binary, "--helpfull"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"attnd --helpfull exited {out.returncode}:\n{text}"
    flags = set(re.findall(r"^  --([a-z0-9_]+) \(default: ", out.stdout, flags=re.M))
    assert {"listen", "http_listen"} <= flags, f"could not read the flags from --helpfull:\n{text}"
    return flags


def assert_attnd_variables_are_flags(env: dict[str, str], flags: set[str], where: str) -> None:
    for name in env:
        if name.startswith("ATTND_") and name != "ATTND_TARGET":  # ATTND_TARGET: the engine's
            flag = name[len("ATTND_"):].lower()
            assert flag in flags, f"{where}: {name} is not a flag of attnd (--{flag})"


# --- Dockerfile ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stages() -> list[dockerfile.Stage]:
    _, parsed = dockerfile.parse_stages((REPO / "Dockerfile").read_text(encoding="utf-8"))
    return parsed


def test_dockerfile_builds_on_cuda_devel_and_runs_on_cuda_runtime(stages):
    assert len(stages) == 2, [s.name for s in stages]
    build, runtime = stages
    assert build.name == "build" and re.match(r"nvidia/cuda:\$\{CUDA_VERSION\}-devel-", build.base)
    assert re.match(r"nvidia/cuda:\$\{CUDA_VERSION\}-runtime-", runtime.base)


def test_dockerfile_build_stage_runs_the_readme_scripts(stages):
    runs = " && ".join(i.args for i in stages[0].all("RUN"))
    assert "./scripts/setup.sh" in runs and "./scripts/build.sh" in runs


def test_dockerfile_runtime_stage_has_no_dev_packages_and_only_the_daemon(stages):
    runtime = stages[1]
    for run in runtime.all("RUN"):
        assert not re.search(r"\S+-dev\b", run.args), f"line {run.line}: a -dev package at runtime"
        assert "setup.sh" not in run.args and "build.sh" not in run.args
    copied = [i.args for i in runtime.all("COPY")]
    assert any("--from=build" in c and c.endswith(" /usr/local/bin/attnd") for c in copied), copied


def test_dockerfile_runs_attnd_as_non_root_with_env_configuration(stages):
    runtime = stages[1]
    user = runtime.all("USER")[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert dockerfile.entrypoint_command(runtime) == ["/usr/local/bin/attnd"]
    env = dockerfile.stage_env(runtime)
    assert env["ATTND_LISTEN"] == "unix:///run/attnd/attnd.sock"
    assert env["ATTND_HTTP_LISTEN"] == "0.0.0.0:9401"
    assert runtime.one("STOPSIGNAL").args == "SIGTERM"


def test_dockerfile_exposes_metrics_port_and_socket_volume(stages):
    runtime = stages[1]
    env = dockerfile.stage_env(runtime)
    assert runtime.one("EXPOSE").args.split() == [str(http_port(env["ATTND_HTTP_LISTEN"]))]
    volumes = dockerfile.exec_form(runtime.one("VOLUME").args)
    assert socket_dir(env["ATTND_LISTEN"]) in volumes
    # The socket directory is created in the image, owned by the runtime user.
    runs = " ".join(i.args for i in runtime.all("RUN"))
    assert re.search(r"install -d -o attnd -g attnd -m 0770 /run/attnd", runs)


def test_dockerfile_healthcheck_probes_readyz_on_the_http_port(stages):
    command = dockerfile.healthcheck_command(stages[1])
    assert "/readyz" in command and "ATTND_HTTP_LISTEN" in command and "curl -fsS" in command


def test_dockerfile_copies_only_what_exists_and_dockerignore_keeps(stages):
    ignored = (REPO / ".dockerignore").read_text(encoding="utf-8")
    for run in stages[0].all("COPY"):
        words = run.args.split()
        if any(w.startswith("--from") for w in words):
            continue
        for source in words[:-1]:
            if source == ".":
                continue
            assert (REPO / source).exists(), f"COPY {source}: no such file"
            assert source.split("/")[0] not in ignored.split(), f"COPY {source} is .dockerignored"
    for must_ignore in (".git", ".venv", "/build*"):
        assert must_ignore in ignored.split()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_dockerfile_run_and_healthcheck_commands_pass_shellcheck(stages, tmp_path):
    snippets = []
    for stage in stages:
        shell = "bash" if stage.all("SHELL") else "sh"
        for run in stage.all("RUN"):
            snippets.append((f"RUN at line {run.line}", shell, run.args))
    snippets.append(("HEALTHCHECK", "sh", dockerfile.healthcheck_command(stages[1])))
    failures = []
    for label, shell, text in snippets:
        script = tmp_path / "snippet.sh"
        # ARG/ENV values are set by Docker: declare them for shellcheck (SC2154).
        script.write_text(f"#!/bin/{shell}\n# shellcheck disable=SC2154\n{text}\n", encoding="utf-8")
        result = subprocess.run(["shellcheck", "-s", shell, str(script)], capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{label}: {text}\n{result.stdout}")
    assert not failures, "\n".join(failures)


# --- Kubernetes ----------------------------------------------------------------------------------

def pod_spec(documents: list[dict]) -> dict:
    workloads = [d for d in documents if d["kind"] in ("Deployment", "StatefulSet", "Pod")]
    assert len(workloads) == 1
    workload = workloads[0]
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_attnd_is_a_native_sidecar_with_shared_namespaces(path):
    template = pod_spec(load_yaml_documents(path))
    spec = template["spec"]
    attnd = [c for c in spec.get("initContainers", []) if c["name"] == "attnd"]
    assert len(attnd) == 1, "attnd must be an init container"
    assert attnd[0]["restartPolicy"] == "Always", "a native sidecar has restartPolicy: Always"
    assert spec["shareProcessNamespace"] is True and spec["hostIPC"] is True
    assert spec["containers"], "an engine container"


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_socket_and_shm_volumes_are_shared_by_every_container(path):
    template = pod_spec(load_yaml_documents(path))
    spec = template["spec"]
    attnd = next(c for c in spec["initContainers"] if c["name"] == "attnd")
    volumes = {v["name"]: v for v in spec["volumes"]}
    run_dir = socket_dir(env_of(attnd)["ATTND_LISTEN"])
    for container in [attnd] + spec["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get("/dev/shm") and volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert run_dir in mounts, f"{container['name']} does not mount {run_dir}"
        assert "emptyDir" in volumes[mounts[run_dir]]
    engine_target = env_of(spec["containers"][0]).get("ATTND_TARGET")
    assert engine_target == env_of(attnd)["ATTND_LISTEN"]


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_probes_and_scrape_annotations_use_the_metrics_port(path):
    template = pod_spec(load_yaml_documents(path))
    attnd = next(c for c in template["spec"]["initContainers"] if c["name"] == "attnd")
    port = http_port(env_of(attnd)["ATTND_HTTP_LISTEN"])
    assert env_of(attnd)["ATTND_HTTP_LISTEN"].startswith("0.0.0.0:"), "kubelet probes the pod IP"
    named = {p["name"]: p["containerPort"] for p in attnd["ports"]}
    expected_paths = {"startupProbe": "/readyz", "livenessProbe": None, "readinessProbe": "/readyz"}
    for probe_name, path_expected in expected_paths.items():
        probe = attnd[probe_name]["httpGet"]
        probe_port = named.get(probe["port"], probe["port"])
        assert probe_port == port, f"{probe_name} probes port {probe['port']}"
        if path_expected:
            assert probe["path"] == path_expected
        else:
            assert probe["path"] in ("/healthz", "/readyz")
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_gpu_reaches_both_containers(path):
    documents = load_yaml_documents(path)
    spec = pod_spec(documents)["spec"]
    attnd = next(c for c in spec["initContainers"] if c["name"] == "attnd")
    engine = spec["containers"][0]
    if "nvidia.com/gpu" in attnd["resources"].get("limits", {}):
        # Device plugin: attnd holds the GPU; the engine sees the node's GPUs.
        assert attnd["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env_of(engine)["NVIDIA_VISIBLE_DEVICES"] == "all"
        assert spec["nodeSelector"]["nvidia.com/gpu.count"] == "1"
    else:
        # DRA: one claim, named by both containers.
        claims = {c["name"] for c in spec["resourceClaims"]}
        templates = {d["metadata"]["name"] for d in documents if d["kind"] == "ResourceClaimTemplate"}
        assert {c["resourceClaimTemplateName"] for c in spec["resourceClaims"]} <= templates
        for container in (attnd, engine):
            assert {c["name"] for c in container["resources"]["claims"]} == claims


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_runs_non_root_as_the_image_user(path):
    spec = pod_spec(load_yaml_documents(path))["spec"]
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == IMAGE_UID and context["fsGroup"] == IMAGE_UID
    attnd = next(c for c in spec["initContainers"] if c["name"] == "attnd")
    assert attnd["securityContext"]["allowPrivilegeEscalation"] is False
    assert env_of(attnd)["ATTND_SOCKET_MODE"] == "0660"


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_attnd_variables_are_daemon_flags(path, daemon_flags):
    spec = pod_spec(load_yaml_documents(path))["spec"]
    attnd = next(c for c in spec["initContainers"] if c["name"] == "attnd")
    assert_attnd_variables_are_flags(env_of(attnd), daemon_flags, path.name)


# --- compose -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml_documents(REPO / "deploy" / "compose" / "compose.yaml")[0]


def test_compose_engine_shares_ipc_pid_socket_and_gpu_with_attnd(compose):
    attnd, engine = compose["services"]["attnd"], compose["services"]["engine"]
    assert attnd["ipc"] == "shareable" and engine["ipc"] == "service:attnd"
    assert engine["pid"] == "service:attnd"
    run_dir = socket_dir(attnd["environment"]["ATTND_LISTEN"])
    assert any(v.endswith(":" + run_dir) for v in attnd["volumes"])
    assert sorted(attnd["volumes"]) == sorted(engine["volumes"][:len(attnd["volumes"])])
    assert engine["environment"]["ATTND_TARGET"] == attnd["environment"]["ATTND_LISTEN"]

    def gpu(service):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        return device["device_ids"]
    assert gpu(attnd) == gpu(engine)
    assert engine["depends_on"]["attnd"]["condition"] == "service_healthy"
    assert engine["user"].split(":")[1] == str(IMAGE_UID), "the engine needs the socket's group"


def test_compose_healthcheck_probes_readyz_on_the_http_port(compose):
    attnd = compose["services"]["attnd"]
    port = http_port(attnd["environment"]["ATTND_HTTP_LISTEN"])
    assert f"http://127.0.0.1:{port}/readyz" in attnd["healthcheck"]["test"]
    assert any(p.endswith(f":{port}:{port}") for p in attnd["ports"])


def test_compose_attnd_variables_are_daemon_flags(compose, daemon_flags):
    assert_attnd_variables_are_flags(compose["services"]["attnd"]["environment"], daemon_flags,
                                     "compose.yaml")


# --- systemd -------------------------------------------------------------------------------------

def unit_settings(path: pathlib.Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def env_file(path: pathlib.Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line}"
            pairs[key] = value
    return pairs


def test_systemd_unit_runs_attnd_non_root_with_its_socket_directory():
    unit = unit_settings(REPO / "deploy" / "systemd" / "attnd.service")
    env = env_file(REPO / "deploy" / "systemd" / "attnd.env")
    assert unit["ExecStart"] == ["/usr/local/bin/attnd"]
    assert unit["User"] == ["attnd"]
    assert unit["EnvironmentFile"] == ["-/etc/attnd/attnd.env"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert socket_dir(env["ATTND_LISTEN"]) == "/run/" + unit["RuntimeDirectory"][0]


def test_systemd_env_file_sets_only_daemon_flags(daemon_flags):
    env = env_file(REPO / "deploy" / "systemd" / "attnd.env")
    assert_attnd_variables_are_flags(env, daemon_flags, "attnd.env")


def test_operations_doc_explains_every_flag(daemon_flags):
    docs = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = sorted(f for f in daemon_flags if f"`--{f}" not in docs)
    assert not missing, f"docs/operations.md does not explain: {missing}"


# --- the image's runtime packages ------------------------------------------------------------------

def test_runtime_packages_of_the_built_daemon_are_runtime_libraries():
    """deploy/docker/runtime-packages.sh (the image's build stage) on the attnd built here."""
    binary = os.environ.get("ATTND_BIN", str(REPO / "build" / "bin" / "attnd"))
    if not os.access(binary, os.X_OK) or shutil.which("dpkg") is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is not built")
        pytest.skip(f"{binary} is not built or no dpkg")
    result = subprocess.run([str(REPO / "deploy" / "docker" / "runtime-packages.sh"), binary],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    packages = result.stdout.split()
    assert not [p for p in packages if p.endswith("-dev")], packages
    for prefix in ("libgrpc++1", "libprotobuf", "libabsl", "libspdlog"):
        assert any(p.startswith(prefix) for p in packages), f"no {prefix}* in {packages}"
