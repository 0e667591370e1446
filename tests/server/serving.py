"""Starting and stopping a `vllm serve` subprocess (default multi-process engine) for server tests."""

import contextlib
import os
import socket
import subprocess

import pytest

from vllm_neuronchip.cli import stop_server, tiny_serve_command, wait_until_healthy
from vllm_neuronchip.quantization.spike_recorder import STATS_DIR_ENV

STARTUP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def show_log_tail(config: pytest.Config, log_path, chars: int = 6000) -> None:
    """Print the end of the server log past pytest's output capture."""
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n--- tail of {log_path} ---\n{log_path.read_text()[-chars:]}")


@contextlib.contextmanager
def running_server(model_dir, served_name: str, max_model_len: int, tmp_path_factory, request):
    """Yield the base URL of a healthy server on model_dir; print its log tail if startup or a test fails."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = tiny_serve_command(model_dir, served_name, port, max_model_len)
    # The default multi-process engine, and the server's own spike-statistics directory.
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", STATS_DIR_ENV)}
    failed_before, healthy = request.session.testsfailed, False
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(url, process, STARTUP_TIMEOUT_S)
        healthy = True
        yield url
    finally:
        if not healthy or request.session.testsfailed > failed_before:
            show_log_tail(request.config, log_path)
        stop_server(process)
