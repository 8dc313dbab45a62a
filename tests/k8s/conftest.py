"""The offline validators (kubectl, kubernetes-validate, checkov, actionlint) live in their own environment,
created by `make test` from k8s/tools-requirements.txt: checkov pins packages below what the project needs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "k8s-crds"
TOOLS = Path(os.environ.get("TOOLS_VENV", ROOT / ".venv-tools")) / "bin"
KUBERNETES_VERSION = "1.37.0"  # the kubectl that tools-requirements.txt pins, and the schemas validated against
VARIANTS = ("base", "overlays/dev", "overlays/gpu-prod", "overlays/kserve")


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test` creates the validation tools' environment ({TOOLS.parent})")
    return path


def run_tool(name: str, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([tool(name), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        pytest.fail(f"{name} {' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def validation_errors(path: Path) -> dict[str, list[str]]:
    """'Kind/name' -> its schema errors, for every object in the YAML file `path` (see validate_objects.py)."""
    if not CRDS.exists():
        pytest.skip(f"the upstream CRD schemas ({CRDS}) are absent")
    done = run_tool(
        "python",
        Path(__file__).with_name("validate_objects.py"),
        path,
        "--crds",
        CRDS,
        "--kubernetes-version",
        KUBERNETES_VERSION,
    )
    results = [yaml.safe_load(line) for line in done.stdout.splitlines()]
    return {f"{r['kind']}/{r['name']}": r["errors"] for r in results}


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kustomization under k8s/ rendered by `kubectl kustomize`, as a YAML file."""
    folder = tmp_path_factory.mktemp("rendered")
    files = {}
    for variant in VARIANTS:
        files[variant] = folder / f"{variant.replace('/', '_')}.yaml"
        files[variant].write_text(run_tool("kubectl", "kustomize", K8S / variant).stdout)
    return files


def objects(path: Path) -> list[dict]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]
