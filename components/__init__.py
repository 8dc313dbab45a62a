"""One thin Kubeflow component per pipeline step (later issues)."""
