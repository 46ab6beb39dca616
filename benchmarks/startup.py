"""How long the commands take to give their first answer, in CPU seconds (user + sys of the command's process and
its children), against the floor every command pays: ``python -c "import torch, torchvision"``.

    python -m benchmarks.startup [--repeats 3] [--repo ../vitlit-before .]

Rows: predict of one photo with a micro and a ViT-B/16 checkpoint (random weights: the speed is the same), the demo
page served (until ``GET /`` answers; needs vitlit[demo]), export to safetensors, ``train.py --help`` and a misspelled
key (``trainer.max_epoch=3``). Each command runs ``--repeats`` times, interleaved; the median is printed. Several
``--repo`` checkouts (e.g. a ``git worktree`` of an older commit, then this one) give a before/after table in one run.
Linux only (the demo's CPU time is read from /proc while its server keeps running).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.timing import cpu_capability, markdown_table

WRITE_CHECKPOINTS = """
import sys, torch
from vitlit.training.module import ViTClassifier
sizes = {"micro": dict(embed_dim=64, depth=2, num_heads=4, mlp_dim=128),
         "vit_b16": dict(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072)}
for name, size in sizes.items():
    torch.manual_seed(0)
    module = ViTClassifier(net=dict(image_size=224, patch_size=16, **size), class_names=["pizza", "steak", "sushi"])
    data = {"image_size": 224, "eval_crop_fraction": 0.875, "interpolation": "bilinear",
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "datamodule_hyper_parameters": data}, f"{sys.argv[1]}/{name}.ckpt")
"""


def cpu_seconds_of(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run ``command`` to its end; its CPU seconds (user + sys, children included)."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float:
    """User + sys seconds of a running process and its reaped children (/proc/<pid>/stat fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def demo_cpu_seconds(checkpoint: Path, cwd: Path, env: dict[str, str], out: Path, timeout: float = 180) -> float:
    """Start the demo and return its CPU seconds at the moment its page first answers."""
    port = _free_port()
    command = [sys.executable, "-m", "vitlit.demo", f"ckpt_path={checkpoint}", f"server_port={port}", "examples=0"]
    command.append(f"hydra.run.dir={out / f'demo_{port}'}")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the demo exited with status {process.returncode}: {' '.join(command)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return _process_cpu_seconds(process.pid)
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"the demo's page did not answer within {timeout} s")
    finally:
        process.kill()
        process.wait()


def time_commands(repo: Path, repeats: int) -> dict[str, list[float]]:
    """CPU seconds of every row's command, ``repeats`` times, running ``repo``'s code."""
    env = {**os.environ, "PYTHONPATH": str(repo), "NO_PROXY": "127.0.0.1,localhost", "GRADIO_ANALYTICS_ENABLED": "0"}
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        subprocess.run([python, "-c", WRITE_CHECKPOINTS, str(out)], cwd=repo, env=env, check=True)
        photo = out / "photo.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8)).save(photo)
        counter = iter(range(10**6))

        def predict(name: str) -> list[str]:
            run_dir = out / f"predict_{next(counter)}"
            return [python, "-m", "vitlit.predict", f"ckpt_path={out / name}.ckpt", f"inputs=[{photo}]",
                    f"hydra.run.dir={run_dir}"]  # fmt: skip

        def export() -> list[str]:
            return [python, "-m", "vitlit.export", str(out / "micro.ckpt"), str(out / f"w{next(counter)}.safetensors")]

        train = [python, str(repo / "train.py")]
        rows: dict[str, Any] = {
            'python -c "import torch"': lambda: [python, "-c", "import torch"],
            FLOOR: lambda: [python, "-c", "import torch, torchvision"],
            GRADIO: lambda: [python, "-c", "import gradio"],
            "predict one photo, micro checkpoint": lambda: predict("micro"),
            "predict one photo, ViT-B/16 checkpoint": lambda: predict("vit_b16"),
            DEMO: None,
            "export to safetensors (micro)": export,
            "train.py --help": lambda: [*train, "--help"],
            "train.py trainer.max_epoch=3 (misspelled key)": lambda: [*train, "trainer.max_epoch=3"],
        }
        seconds: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(repeats):
            for name, command in rows.items():
                if command is None:
                    seconds[name].append(demo_cpu_seconds(out / "micro.ckpt", repo, env, out))
                else:
                    seconds[name].append(cpu_seconds_of(command(), repo, env))
    return seconds


FLOOR = 'python -c "import torch, torchvision" (the floor)'
GRADIO = 'python -c "import gradio"'
DEMO = "demo page served (micro checkpoint)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--repo", type=Path, nargs="+", default=[Path(__file__).resolve().parents[1]],
        help="the checkouts to time, one column each (e.g. a git worktree of an older commit, then this one)",
    )  # fmt: skip
    args = parser.parse_args()
    repos = [repo.resolve() for repo in args.repo]
    # Rounds alternate between the checkouts, so a busy moment of the machine hits both alike.
    runs: dict[Path, dict[str, list[float]]] = {repo: {} for repo in repos}
    for _ in range(args.repeats):
        for repo in repos:
            for name, values in time_commands(repo, 1).items():
                runs[repo].setdefault(name, []).extend(values)
    header, table = ["command"], []
    for repo in repos:
        header += [f"CPU s ({repo.name})", "ratio to the floor"]
    for name in runs[repos[0]]:
        cells = [name]
        for repo in repos:
            median = {key: statistics.median(values) for key, values in runs[repo].items()}
            ratio = f"{median[name] / median[FLOOR]:.2f}x"
            if name == DEMO:
                aim = 1.3 * median[FLOOR] + median[GRADIO]
                ratio += f" ({median[name] / aim:.2f} of 1.3x floor + import gradio)"
            cells += [f"{median[name]:.2f}", ratio]
        table.append(cells)
    print(f"{cpu_capability()}; median of {args.repeats} runs each, CPU seconds (user + sys):")
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
