"""export: the winner as one ONNX file for Triton, checked against PyTorch on real validation rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.steps.common import StepConfig
from serving.export import PARITY_ROWS, export_model


@dataclass(frozen=True)
class ExportRun(StepConfig):
    rows: int = PARITY_ROWS  # validation rows of the parity check
    external_data: bool | None = None  # weights beside the graph; None: only past one protobuf (2 GiB)

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"rows: must be >= 1, got {self.rows}")


def export(
    model_dir: Path, data_dir: Path | None, out: Path, run: ExportRun, evaluation: Path | None = None
) -> dict[str, Any]:
    """Export into `out`; `evaluation` (the evaluate step's evaluation.json) puts the test metrics in the
    metadata, where a later run's quality gate reads them. Returns the export record (`out/export.json`)."""
    test = json.loads(Path(evaluation).read_text())["test"] if evaluation else None
    result = export_model(model_dir, out, data_dir, run.rows, run.external_data, test)
    parity = result.parity
    print(
        f"wrote {result.model}: ONNX Runtime matches PyTorch on {parity['rows']} validation rows "
        f"(max abs diff {parity['max_abs_diff']:.2e} <= {parity['tolerance']:g})"
    )
    return json.loads((result.out / "export.json").read_text())
