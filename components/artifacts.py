"""What the Kubeflow components share: metrics, reports and logs written the same way by every step."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

LOG_DIR_VARIABLE = "NASREC_STEP_LOG_DIR"  # set by `nasrec pipeline run-local`: each step also logs to a file


def flat_figures(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a nested result, keyed by its dotted path (booleans as 0/1; lists are skipped)."""
    figures: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            figures |= flat_figures(value, name + ".")
        elif isinstance(value, bool | int | float):
            figures[name] = float(value)
    return figures


def log_metrics(metrics: Any, result: dict[str, Any]) -> None:
    """Log the result's numbers on a KFP `Metrics` artifact, and write the whole result as its file (the file
    also lets kfp.local's cache, which drops entries whose artifact files are missing, reuse the step)."""
    for name, value in flat_figures(result).items():
        metrics.log_metric(name, value)
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def images_page(title: str, images: list[Path]) -> str:
    """An HTML page showing PNG files inline (a KFP HTML artifact is one self-contained file)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"]
    for image in images:
        encoded = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(image.stem)}</h2><img src='data:image/png;base64,{encoded}'>")
    return "".join(parts) + "</body></html>\n"


def top_k_table(records: list[dict[str, Any]]) -> str:
    """The search's best architectures as a Markdown table."""
    lines = ["| rank | validation AUC | validation log loss | MFLOPs | parameters |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| {rank} | {r['val_auc']:.4f} | {r['val_logloss']:.4f} | {r['mflops']:.3f} | {r['parameters']:,} |"
        for rank, r in enumerate(records, 1)
    ]
    return "# Top architectures\n\n" + "\n".join(lines) + "\n"


class _Tee:
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def step_log(step: str) -> Iterator[None]:
    """Time the step and, when `$NASREC_STEP_LOG_DIR` is set, copy its output into `<that folder>/<step>.log`;
    its last line says how long the step took, or why it failed."""
    folder = os.environ.get(LOG_DIR_VARIABLE)
    with contextlib.ExitStack() as stack:
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            log = stack.enter_context(open(Path(folder) / f"{step}.log", "w"))
            stack.enter_context(contextlib.redirect_stdout(_Tee(sys.stdout, log)))
            stack.enter_context(contextlib.redirect_stderr(_Tee(sys.stderr, log)))
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:
            print(f"{step} failed: {type(error).__name__}: {error}", file=sys.stderr)
            raise
        print(f"{step} took {time.perf_counter() - started:.1f} s", flush=True)
