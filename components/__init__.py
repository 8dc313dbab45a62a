"""The pipeline's steps: `steps/` holds them as plain functions; each module beside it is the thin Kubeflow
component over one of them, run in the project's image (`images.py`)."""
