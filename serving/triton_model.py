"""Triton Python-backend model: ONNX Runtime on the version's model.onnx (the local serving variant).

Copied into each version directory as model.py by `serving.repository`; it runs inside Triton's Python
backend stub, in the serving runtime environment (numpy < 2, onnxruntime), and imports nothing of this
project. The requests Triton's dynamic batcher hands over are concatenated into one ONNX Runtime call; a
large batch is cut into parts run at once on a thread pool (ONNX Runtime releases the GIL), because on
this graph of many small operators that uses a second core far better than intra-op threads do.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DENSE, SPARSE, OUTPUT = "dense", "sparse", "probability"
MIN_PART_ROWS = 128  # smaller parts cost more per row than they save


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("onnx_intra_op_threads", {}).get("string_value", "1"))
        options.inter_op_num_threads = 1
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.parts = int(parameters.get("onnx_parallel_runs", {}).get("string_value", "1"))
        self.pool = ThreadPoolExecutor(self.parts) if self.parts > 1 else None

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
        parts = min(self.parts, len(dense) // MIN_PART_ROWS)
        if parts < 2:
            return self._run_part(dense, sparse)
        results = self.pool.map(self._run_part, np.array_split(dense, parts), np.array_split(sparse, parts))
        return np.concatenate(list(results))

    def _run_part(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {DENSE: dense, SPARSE: sparse})[0]

    def _respond(self, dense: np.ndarray, sparse: np.ndarray):
        try:
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, self._run(dense, sparse))])
        except Exception as error:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"ONNX Runtime: {error}"))

    def finalize(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
