"""Kubeflow pipeline definitions, local runs, and the `nasrec` command line."""
