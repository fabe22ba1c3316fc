"""A side venv with pillow-simd, for measuring it with the same code as Pillow.

pillow-simd installs the package `PIL` in place of Pillow, so it cannot live in the main venv. This module
makes `$OFFSHELF_HOME/bench/venv-pillow-simd`: a venv of the *same* interpreter with `pillow-simd` built from
source (it needs a C compiler and the libjpeg / zlib headers: Debian `build-essential libjpeg-dev zlib1g-dev`),
plus a `.pth` file that appends the main venv's site-packages to `sys.path`. Its own site-packages comes
first, so `import PIL` finds pillow-simd while numpy, onnxruntime and offshelf's other dependencies come
from the main venv: the benchmark runs the very same functions (offshelf's decoder and reader) in both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from benchmarks.harness.stores import bench_home

#: What is installed; the lower bound is the first release for Pillow >= 12.
REQUIREMENT = "pillow-simd>=12.1"


def simd_venv_dir() -> Path:
    return bench_home() / "venv-pillow-simd"


def simd_python(*, log=print) -> Path:
    """The side venv's python, made (once) if missing; RuntimeError with pip's last lines if it cannot be built."""
    root = simd_venv_dir()
    python = root / "bin" / "python"
    ready = root / ".offshelf-ready"
    if ready.exists():
        return python
    if not root.exists():
        log(f"creating {root} ...")
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    log(f"pip install {REQUIREMENT} (builds from source: a minute or two) ...")
    env = {**os.environ, "CC": os.environ.get("CC", "cc -mavx2")}  # pillow-simd's documented AVX2 build
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-binary", ":all:", "--no-cache-dir", REQUIREMENT],
        env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"pip install {REQUIREMENT} failed:\n{tail}")
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip())
    (own / "offshelf-main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ready.write_text(REQUIREMENT + "\n")
    return python
