"""The built wheel installed like a library and run like a tool: the console scripts work from any folder with
the configs shipped inside the package, a user's own config folder extends them, and every output lands under
the current folder, none in site-packages."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TINY_RUN, make_image_folder

from vitlit.configs import CONFIG_DIR

SCRIPTS = ("vitlit-train", "vitlit-eval", "vitlit-predict", "vitlit-export", "vitlit-demo")


def clean_environment() -> dict[str, str]:
    """This environment without what would point the commands at the checkout or move their outputs."""
    dropped = {"PYTHONPATH", "VITLIT_LOG_DIR", "HYDRA_FULL_ERROR", "VIRTUAL_ENV"}
    return {key: value for key, value in os.environ.items() if key not in dropped}


def run(command: list[str | Path], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=clean_environment(), capture_output=True, text=True, timeout=300
    )


def files_under(folder: Path) -> set[Path]:
    """Every file under ``folder`` except bytecode caches (the interpreter may write those on import)."""
    return {path.relative_to(folder) for path in folder.rglob("*") if "__pycache__" not in path.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (a build writes build/ and *.egg-info into its source)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in ("vitlit", "conf"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source]
    result = run(build, cwd=tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = (tmp / "dist").glob("vitlit-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> dict[str, Path]:
    """A fresh virtual environment holding the wheel; torch, Lightning, ... come from the system's site-packages."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    result = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root], cwd=root.parent)
    assert result.returncode == 0, result.stderr
    python = root / "bin" / "python"
    # The system's pip, run by the venv's interpreter, installs into the venv.
    result = run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", wheel], cwd=root.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    where = run([python, "-c", "import vitlit, vitlit.configs as c; print(vitlit.__file__); print(c.CONFIG_DIR)"], root)
    assert where.returncode == 0, where.stderr
    package_file, config_dir = (Path(line) for line in where.stdout.split())
    site_packages = package_file.parent.parent
    assert site_packages.is_relative_to(root), f"the venv imports vitlit from {package_file}, not from the wheel"
    assert config_dir == site_packages / "vitlit" / "conf"
    return {"bin": root / "bin", "site_packages": site_packages}


def test_the_wheel_holds_every_module_every_config_and_the_console_scripts(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
        scripts = dict(
            line.replace(" ", "").split("=") for line in archive.read(entry_points).decode().splitlines() if "=" in line
        )
    modules = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "vitlit").rglob("*.py")}
    conf = REPO_ROOT / "conf"
    configs = {f"vitlit/conf/{path.relative_to(conf).as_posix()}" for path in conf.rglob("*") if path.is_file()}
    assert {name for name in names if ".dist-info/" not in name} == modules | configs
    assert sorted(scripts) == sorted(SCRIPTS)
    for target in scripts.values():  # e.g. vitlit.train:command_line
        assert target.partition(":")[0].replace(".", "/") + ".py" in names, target


def test_a_checkout_reads_the_top_level_conf():
    assert CONFIG_DIR == REPO_ROOT / "conf"


def test_every_hydra_command_reads_the_packaged_configs():
    """A ``config_path`` relative to the module ("../conf") finds the checkout's conf/ but nothing in a wheel."""
    relative = []
    for path in sorted((REPO_ROOT / "vitlit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "hydra.main":
                config_path = next(keyword.value for keyword in node.keywords if keyword.arg == "config_path")
                if ast.unparse(config_path) != "str(CONFIG_DIR)":
                    relative.append(f"{path.relative_to(REPO_ROOT)}: config_path={ast.unparse(config_path)}")
    assert not relative, "use config_path=str(vitlit.configs.CONFIG_DIR):\n" + "\n".join(relative)


def test_console_scripts_train_predict_and_export_from_any_folder(venv: dict[str, Path], tmp_path: Path):
    work = tmp_path / "elsewhere"
    make_image_folder(work / "images", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    own_configs = work / "my_configs" / "experiment"
    own_configs.mkdir(parents=True)
    (own_configs / "from_wheel.yaml").write_text("# @package _global_\ntask_name: from_wheel\n")
    installed = files_under(venv["site_packages"])

    train = [venv["bin"] / "vitlit-train", "--config-dir", "my_configs", "experiment=from_wheel", *TINY_RUN]
    result = run([*train, "debug=fast", "data.root=images"], cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "from_wheel" / "runs").iterdir()  # the user's experiment named the folder
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file() and (run_dir / "train.log").is_file() and (run_dir / "metrics.json").is_file()

    photo = work / "images" / "test" / "cat" / "0.jpg"
    result = run([venv["bin"] / "vitlit-predict", f"ckpt_path={checkpoint}", f"inputs=[{photo}]", "json=true"], work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = json.loads(result.stdout)
    assert record["path"] == str(photo) and record["predictions"][0]["class"] in {"cat", "dog"}
    (predict_dir,) = (work / "outputs" / "predict" / "runs").iterdir()
    assert json.loads((predict_dir / "predictions.json").read_text())[0]["path"] == str(photo)

    result = run([venv["bin"] / "vitlit-export", checkpoint, "vit.safetensors", "--layout", "timm"], cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # main's return value is no exit code
    assert (work / "vit.safetensors").stat().st_size > 0

    assert {path.name for path in work.iterdir()} == {"images", "my_configs", "outputs", "vit.safetensors"}
    assert files_under(venv["site_packages"]) == installed
