"""The local Triton server: the real `tritonserver` binary of the nvidia-pytriton wheel, in its own runtime.

That wheel needs numpy < 2 and Feast needs numpy >= 2, so Triton runs from a separate virtual environment
(`make` creates `.venv-triton` from `serving/runtime-requirements.txt`). It ships no ONNX Runtime backend:
models are served by Triton's Python backend running ONNX Runtime (the repository's `local` variant).

Running the binary needs, besides the repository:
- a backend directory with the Python backend and the stub built for the runtime's Python version;
- the wheel's bundled libraries and the runtime interpreter's own libpython on LD_LIBRARY_PATH (without
  the latter the stub may load the system's libpython and fail in multiprocessing);
- the runtime's `bin` first on PATH: the stub takes its Python from the first `python3` there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.errors import TritonError
from serving.interface import IDS_SUFFIX
from serving.repository import CANDIDATE_SUFFIX

RUNTIME_ENV_VARIABLE = "NASREC_TRITON_ENV"
RUNTIME_DIR_NAME = ".venv-triton"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TritonRuntime:
    """A virtual environment holding nvidia-pytriton (the server), numpy < 2 and onnxruntime (the model)."""

    prefix: Path

    @classmethod
    def find(cls, prefix: Path | None = None) -> TritonRuntime:
        """The runtime at `prefix`, else at $NASREC_TRITON_ENV, else `.venv-triton` here or in the project root."""
        named = prefix or os.environ.get(RUNTIME_ENV_VARIABLE)
        if named:
            candidates = [Path(named)]
        else:
            candidates = [Path.cwd() / RUNTIME_DIR_NAME, Path(__file__).resolve().parents[1] / RUNTIME_DIR_NAME]
        for candidate in candidates:
            runtime = cls(candidate.absolute())
            with contextlib.suppress(TritonError):
                if runtime.binary.exists():
                    return runtime
        raise TritonError(
            f"no Triton runtime environment (nvidia-pytriton) at {', '.join(map(str, candidates))}: create it with "
            f"`make serving-env` (make run and make test do), or point {RUNTIME_ENV_VARIABLE} at one"
        )

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python3"

    @property
    def site_packages(self) -> Path:
        matches = sorted((self.prefix / "lib").glob("python3.*/site-packages"))
        if not matches:
            raise TritonError(f"{self.prefix}: no lib/python3.*/site-packages; is it a virtual environment?")
        return matches[-1]

    @property
    def python_version(self) -> str:
        return self.site_packages.parent.name.removeprefix("python")

    @property
    def wheel(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.wheel / "bin" / "tritonserver"

    def prepare_backends(self, directory: Path) -> Path:
        """A `--backend-directory` with the Python backend and the stub for this runtime's Python."""
        target = directory / "python"
        target.mkdir(parents=True, exist_ok=True)
        stub = self.wheel / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"
        sources = [
            self.wheel / "backends" / "python" / n for n in ("libtriton_python.so", "triton_python_backend_utils.py")
        ]
        for source in (*sources, stub):
            if not source.exists():
                raise TritonError(f"{source}: missing from the nvidia-pytriton wheel in {self.prefix}")
            shutil.copy2(source, target / source.name)
        return directory

    def environment(self) -> dict[str, str]:
        """The process environment tritonserver and its Python stubs need (see the module docstring)."""
        try:
            libdir = subprocess.run(
                [str(self.python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as error:
            raise TritonError(f"{self.python}: the runtime's interpreter does not run ({error}); recreate it") from None
        env = dict(os.environ)
        libraries = [str(self.site_packages / "nvidia_pytriton.libs"), libdir, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in libraries if p)
        env["PATH"] = f"{self.prefix / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # the stubs leave the model repository as deploy wrote it
        for variable in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):  # this process's, not the runtime's
            env.pop(variable, None)
        return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """A `tritonserver` process over a model repository, with explicit model control.

    Ports are picked free unless given. `start()` returns once the server and every model named are
    ready; `stop()` sends SIGTERM to the process group (server and Python stubs), escalating to SIGKILL,
    and removes the stubs' shared memory. A context manager does both.
    """

    def __init__(
        self,
        repository: Path,
        models: tuple[str, ...] | None = None,
        runtime: TritonRuntime | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        log_file: Path | None = None,
        work_dir: Path | None = None,
    ):
        self.repository = Path(repository).absolute()
        if not self.repository.is_dir():
            raise TritonError(f"{self.repository}: no such model repository")
        self.models = tuple(models) if models is not None else _model_names(self.repository)
        if not self.models:
            raise TritonError(f"{self.repository}: holds no models (a folder with config.pbtxt per model)")
        self.runtime = runtime or TritonRuntime.find()
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.work_dir = Path(work_dir or self.repository.parent / f".triton-{self.grpc_port}").absolute()
        self.log_file = Path(log_file or self.work_dir / "tritonserver.log").absolute()
        self.shm_prefix = f"nasrec{self.grpc_port}_"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self, backends: Path) -> list[str]:
        return [
            str(self.runtime.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--grpc-port={self.grpc_port}",
            f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.models),
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
            f"--log-file={self.log_file}",
        ]

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> TritonServer:
        if self.process is not None:
            raise TritonError("the server is already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        backends = self.runtime.prepare_backends(self.work_dir / "backends")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.work_dir / "stdout.log", "ab") as output:
            self.process = subprocess.Popen(
                self.command(backends),
                env=self.runtime.environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: the stubs are stopped with it
                preexec_fn=_terminate_with_parent,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with grpcclient.InferenceServerClient(self.url) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise TritonError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(InferenceServerException):
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in self.models):
                        return
                time.sleep(0.2)
        raise TritonError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.log_file, self.work_dir / "stdout.log"):
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text.strip() or "(no log output)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after `timeout_s`; returns the server's exit code."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # any stub that outlived the server
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate_with_parent() -> None:
    """In the child: SIGTERM it when this process dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _model_names(repository: Path) -> tuple[str, ...]:
    """Every model of the repository but a deploy's candidates, ids models first (events models may call them)."""
    names = [p.parent.name for p in repository.glob("*/config.pbtxt")]
    served = [n for n in names if CANDIDATE_SUFFIX not in n]
    return tuple(sorted(served, key=lambda n: (not n.endswith(IDS_SUFFIX), n)))


def serve_forever(server: TritonServer) -> int:
    """Run (starting it unless it is running) until SIGTERM or Ctrl-C, then stop the server cleanly; returns its
    exit code."""
    stopping = []

    def request_stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if server.process is None:
            server.start()
        print(f"Triton serving {', '.join(server.models)} at {server.url} (gRPC); log: {server.log_file}", flush=True)
        while not stopping:
            if server.process.poll() is not None:
                print(f"tritonserver exited with {server.process.returncode}:\n{server.log_tail()}", file=sys.stderr)
                return server.process.returncode or 1
            time.sleep(0.2)
        print("stopping Triton", flush=True)
        return server.stop() or 0
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
