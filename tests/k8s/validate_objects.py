"""Validate Kubernetes objects offline; run by the validation tools' interpreter (.venv-tools, see the Makefile).

    .venv-tools/bin/python tests/k8s/validate_objects.py FILE.yaml [--crds DIR] [--kubernetes-version 1.37.0]

Built-in kinds are checked, strictly (no unknown fields), against the Kubernetes API schemas that
kubernetes-validate ships; custom resources against the openAPIV3Schema of their version in the upstream CRDs
in DIR. Prints one JSON object per line: {"kind", "name", "errors"}; an object of a kind known to neither is an
error too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml


def crd_schemas(folder: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the CRD's schema for that version."""
    schemas = {}
    for path in sorted(folder.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def errors_of(obj: dict, crds: dict, version: str) -> list[str]:
    schema = crds.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')}: neither Kubernetes {version} nor a CRD"]
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path)) or '<root>'}: {error.message}"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--crds", type=Path)
    parser.add_argument("--kubernetes-version", default="1.37.0")
    args = parser.parse_args()
    crds = crd_schemas(args.crds) if args.crds else {}
    for obj in yaml.safe_load_all(args.file.read_text()):
        if obj:
            name = obj.get("metadata", {}).get("name")
            errors = errors_of(obj, crds, args.kubernetes_version)
            print(json.dumps({"kind": obj.get("kind"), "name": name, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
