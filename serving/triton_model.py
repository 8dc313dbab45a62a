"""Triton Python-backend model: ONNX Runtime on the version's model.onnx (the local serving variant).

Copied into each version directory as model.py by `serving.repository`; it runs inside Triton's Python
backend stub, in the serving runtime environment (numpy < 2, onnxruntime), and imports nothing of this
project. The requests Triton's dynamic batcher hands over are concatenated into one ONNX Runtime call.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DENSE, SPARSE, OUTPUT = "dense", "sparse", "probability"


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("onnx_intra_op_threads", {}).get("string_value", "1"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        dense = [pb_utils.get_input_tensor_by_name(r, DENSE).as_numpy() for r in requests]
        sparse = [pb_utils.get_input_tensor_by_name(r, SPARSE).as_numpy() for r in requests]
        try:
            probability = self._run(np.concatenate(dense), np.concatenate(sparse))
        except Exception:  # some request is bad (e.g. an id past a table's end): answer each on its own
            return [self._respond(d, s) for d, s in zip(dense, sparse)]
        responses, start = [], 0
        for part in dense:
            rows = probability[start : start + len(part)]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, rows)]))
            start += len(part)
        return responses

    def _run(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {DENSE: dense, SPARSE: sparse})[0]

    def _respond(self, dense: np.ndarray, sparse: np.ndarray):
        try:
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, self._run(dense, sparse))])
        except Exception as error:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"ONNX Runtime: {error}"))
