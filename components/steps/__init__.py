"""The pipeline's steps as plain functions: paths in, a folder out, a config dataclass with to_dict/from_dict.

One module a step (ingest, train_supernet, search, finetune, evaluate, export, deploy) over the libraries
(`model`, `features`, `serving`); the command line and the Kubeflow components both call these, and build
their configs the same way (`from_dict`).
"""
