"""The GitHub workflows: actionlint passes them, and they retrain as the README says (triggers, jobs, images
tagged by commit, a submit that waits and fails the workflow when the run fails or the gate refuses)."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.images import REGISTRY
from tests.k8s.conftest import K8S, ROOT, run_tool

WORKFLOWS = ROOT / ".github" / "workflows"


def workflow(name: str) -> dict:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    loaded["on"] = loaded.pop(True)  # YAML 1.1 reads the key `on` as true
    return loaded


def steps(job: dict) -> str:
    return yaml.safe_dump(job["steps"])


def test_actionlint_passes_the_workflows_and_fails_a_broken_one(tmp_path: Path) -> None:
    run_tool("actionlint", *sorted(WORKFLOWS.glob("*.yml")))
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ secret.X }}\n"
    )
    done = run_tool("actionlint", broken, check=False)
    assert done.returncode != 0 and "secret" in done.stdout


def test_retraining_runs_nightly_on_training_code_changes_and_by_hand() -> None:
    on = workflow("retrain.yml")["on"]
    assert [s["cron"] for s in on["schedule"]] == ["0 3 * * *"]
    assert on["push"]["paths"] == ["model/**", "features/**", "components/**", "pipelines/**"]
    assert "workflow_dispatch" in on


def test_retraining_tests_builds_the_commits_images_then_submits_and_waits() -> None:
    jobs = workflow("retrain.yml")["jobs"]
    assert jobs["images"]["needs"] == "test" and jobs["retrain"]["needs"] == "images"
    assert "make test" in steps(jobs["test"])
    registry, _, pipeline_image = REGISTRY.rpartition("/")
    assert workflow("retrain.yml")["env"]["REGISTRY"] == registry
    tags = [s["with"]["tags"] for s in jobs["images"]["steps"] if "build-push-action" in s.get("uses", "")]
    assert tags == [
        f"${{{{ env.REGISTRY }}}}/{pipeline_image}:${{{{ github.sha }}}}-cpu",
        f"${{{{ env.REGISTRY }}}}/{pipeline_image}:${{{{ github.sha }}}}-cuda",
        "${{ env.REGISTRY }}/nasrec-triton:${{ github.sha }}",
    ]
    release = yaml.safe_load((K8S / "components" / "release" / "kustomization.yaml").read_text())
    assert {i["newName"] for i in release["images"]} >= {f"{registry}/{pipeline_image}", f"{registry}/nasrec-triton"}
    (submit,) = [s for s in jobs["retrain"]["steps"] if "pipeline submit" in s.get("run", "")]
    command = submit["run"]
    assert "--wait" in command and '--image-tag "$GITHUB_SHA"' in command  # the images just built
    assert set(submit["env"]) >= {"KFP_HOST", "KFP_TOKEN", "NASREC_PIPELINE_PARAMS"}
    assert all(submit["env"][k] == f"${{{{ secrets.{k} }}}}" for k in ("KFP_HOST", "KFP_TOKEN"))
    assert "pipeline compile" in steps(jobs["retrain"])


def test_pull_requests_run_the_test_suite() -> None:
    test = workflow("test.yml")
    assert set(test["on"]) == {"pull_request"}
    assert "make test" in steps(test["jobs"]["test"])
