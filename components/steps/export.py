"""export: the winner as one ONNX file for Triton, checked against PyTorch on real validation rows."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.steps.common import StepConfig, write_json
from model.network import InputSchema
from serving.export import PARITY_ROWS, export_model
from serving.latency import example_inputs, onnx_latency


@dataclass(frozen=True)
class ExportRun(StepConfig):
    rows: int = PARITY_ROWS  # validation rows of the parity check
    external_data: bool | None = None  # weights beside the graph; None: only past one protobuf (2 GiB)
    latency_batch: int = 512  # rows of the request the exported graph's latency is reported for

    def __post_init__(self) -> None:
        for name in ("rows", "latency_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


def export(
    model_dir: Path, data_dir: Path | None, out: Path, run: ExportRun, evaluation: Path | None = None
) -> dict[str, Any]:
    """Export into `out`; `evaluation` (the evaluate step's evaluation.json) puts the test metrics in the
    metadata, where a later run's quality gate reads them. Returns the export record (`out/export.json`), with
    the graph's latency as served (ONNX Runtime, one thread, this machine) beside the test metrics."""
    test = json.loads(Path(evaluation).read_text())["test"] if evaluation else None
    result = export_model(model_dir, out, data_dir, run.rows, run.external_data, test)
    parity = result.parity
    print(
        f"wrote {result.model}: ONNX Runtime matches PyTorch on {parity['rows']} validation rows "
        f"(max abs diff {parity['max_abs_diff']:.2e} <= {parity['tolerance']:g})"
    )
    schema = InputSchema.from_dict(json.loads(result.metadata["input_schema"]))
    latency = onnx_latency(result.model, *example_inputs(schema, run.latency_batch))
    print(f"served latency, {latency.batch_size} rows a request: p50 {latency.p50_ms:.2f}, p99 {latency.p99_ms:.2f} ms")
    record = json.loads((result.out / "export.json").read_text()) | {"latency": asdict(latency)}
    write_json(result.out / "export.json", record)
    return record
