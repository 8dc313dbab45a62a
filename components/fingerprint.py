"""Kubeflow component: the raw logs' digest, ingest's cache key, read in the pod that sees the files."""

from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def fingerprint(raw_files: list) -> str:
    """The digest of the raw files' names, sizes and modification times, taken where ingest reads them (on a
    cluster, a volume no submitter sees), on every run: a log rewritten in place is ingested again."""
    from components.artifacts import step_log

    with step_log("fingerprint"):
        from components.steps.fingerprint import data_digest

        digest = data_digest(raw_files)
        print(f"raw files {raw_files}: digest {digest}")
        return digest
