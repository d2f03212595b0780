"""A plain wheel install (not editable) finds its configs and the shipped example prompts."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SKIP = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "multirun", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"
)


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(list(map(str, args)), capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installs_into_a_fresh_venv_and_renders(tmp_path, model_cache):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=SKIP)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        tmp_path / "dist",
        source,
    )
    wheel = next((tmp_path / "dist").glob("flux_batch-*.whl"))

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    venv_site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    )
    # the dependencies come from this environment; its editable flux_batch does not (a .pth
    # line adds a path without running that environment's own .pth hooks)
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)

    cwd = tmp_path / "elsewhere"  # not the source tree, which `python -c` would import from
    cwd.mkdir()
    where = run(python, "-c", "import flux_batch; print(flux_batch.__file__)", cwd=cwd)
    assert where.stdout.startswith(str(venv_site)), where.stdout
    env = {
        "PATH": "/usr/bin:/bin",
        "FLUX_BATCH_CACHE": str(model_cache),
        "HF_HUB_OFFLINE": "1",
        "HOME": str(tmp_path),
    }
    result = run(venv / "bin" / "flux-batch", "limit=2", cwd=cwd, env=env)
    assert "rendered 2, skipped 0 already done, failed 0" in result.stdout
    assert len(list((cwd / "outputs").glob("example-demo-q8_0-*/images/*.png"))) == 2
    cfg = run(venv / "bin" / "flux-batch", "--cfg", "job", "model=flux-dev", cwd=cwd, env=env)
    assert "max_sequence_length: 512" in cfg.stdout
    for tool, says in (("flux-batch-gguf", "quantize"), ("flux-batch-grid", "sweep_dir")):
        assert says in run(venv / "bin" / tool, "--help", cwd=cwd, env=env).stdout
