"""One benchmark worker: answers its share of the prompts and appends a record per prompt to its shard.

Runs as ``python -m rain.worker --config FILE [--config FILE ...] [key=value ...]``:
- under the launcher (`rain.parallel`), which passes ``--rank R --world W --plan FILE`` and the GPUs
  of the worker's group in ``CUDA_VISIBLE_DEVICES``;
- under ``torchrun`` or ``accelerate launch``: rank and world size come from ``RANK`` /
  ``WORLD_SIZE`` (``LOCAL_RANK`` picks the GPU); every rank writes its own shard on the shared
  filesystem and the last rank to finish writes the merged JSON.
A worker takes every W-th prompt of its candidate list (the plan, or the whole selection), skips
prompts finished in any shard of the run (same id and same content), loads the model once, and
flushes each record as soon as it is done. The per-prompt seed is ``search.seed + id``, so answers
do not depend on W. A prompt whose answer fails (tokenizer error, out of memory, NaN logits) is
recorded with status 'error' and the worker goes on. Under the launcher the worker ends when the
launcher dies; on its own it holds the run lock shared (see rain/runlock.py). Bad config, data,
model or output: one line on stderr and exit status 2. Knows nothing about GPUs beyond the
environment it is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from rain.config import RainConfig, load_config
from rain.fileio import check_writable_dir, plain_warnings
from rain.records import (RunPaths, ShardWriter, collect, done_ids, error_record, merge, ok_record, run_name,
                          skipped_record, write_or_check_meta)
from rain.runlock import RunLock, stop_with_parent
from rain.tasks import Item, length_filter_text, load_items, load_selection

Answerer = Callable[[Item], dict]


@dataclass(frozen=True)
class Rank:
    """This process's place among the workers."""

    rank: int = 0
    world: int = 1
    local_rank: Optional[int] = None
    """Set under torchrun / accelerate launch: the process's index on its machine."""

    def __post_init__(self):
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world) with world >= 1, got rank={self.rank}, world={self.world}")


def rank_from_env(environ=os.environ) -> Optional[Rank]:
    """The rank set by torchrun / accelerate launch (RANK, WORLD_SIZE, LOCAL_RANK), or None if not set."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    local = environ.get("LOCAL_RANK")
    return Rank(rank=int(environ["RANK"]), world=int(environ["WORLD_SIZE"]),
                local_rank=None if local is None else int(local))


# ----------------------------------------------------------------------------- one prompt

def too_long(tokenizer, item: Item, cfg: RainConfig) -> Optional[str]:
    """Why a prompt cannot be answered (None if it can): the official length filter (tokens of the question in
    its transcript wrapper plus BOS, see `length_filter_text`) and the total limit."""
    import rain

    counted = length_filter_text(cfg.run.benchmark, item.prompt)
    question_tokens = len(tokenizer(counted, add_special_tokens=True)["input_ids"])
    if question_tokens >= cfg.run.max_prompt_tokens:
        return (f"prompt has {question_tokens} tokens as the official filter counts them, "
                f"run.max_prompt_tokens is {cfg.run.max_prompt_tokens}")
    prompt_tokens = len(rain.prompt_ids(tokenizer, item.prompt, cfg.prompt))
    if prompt_tokens >= cfg.search.max_length:
        return f"formatted prompt has {prompt_tokens} tokens, search.max_length is {cfg.search.max_length}"
    return None


class SearchAnswerer:
    """Load the model once; answer prompts `run.batch_size` at a time, their LM work in shared forwards.
    Each record is handed back the moment its prompt is done."""

    def __init__(self, cfg: RainConfig):
        import rain
        from rain.formats import check_judge_options
        from rain.loading import ModelError, NonFiniteLogits, guard_finite_logits

        self.cfg = cfg
        check_judge_options(cfg.judge)
        model, self.tokenizer = rain.load_model(cfg.model)
        guard_finite_logits(model)  # NaN logits raise: that prompt gets an error record, not a NaN answer
        try:
            self.searcher = rain.Searcher(model, self.tokenizer, cfg)  # prefills the judge's fixed prompt
        except NonFiniteLogits as err:
            raise ModelError(f"model {cfg.model.name!r} gives NaN or infinite logits on the judge's fixed prompt, "
                             f"before any question ({err}): its weights are damaged or overflow in this "
                             "dtype") from None

    def __call__(self, item: Item) -> dict:
        ((_, record),) = self.many([item])
        return record

    def many(self, items: list[Item]) -> Iterator[tuple[Item, dict]]:
        """(item, record) for every item, in the order they finish. A prompt whose search raises gets an error
        record. A failure in a forward pass shared by the batch (NaN logits or out of memory in one row) names
        no prompt: the prompts then in flight are answered again one at a time, so that only the failing one
        gets an error record; the rest go on in batches."""
        pending, batch = list(items), self.cfg.run.batch_size
        while pending:
            finished = set()
            try:
                for item, record in self._drive(pending, batch):
                    finished.add(item.id)
                    yield item, record
                return
            except Exception as err:  # noqa: BLE001 - isolated below, then recorded per prompt
                pending = [item for item in pending if item.id not in finished]
                if batch == 1:  # the one in flight failed
                    yield pending[0], failed_record(pending[0], err, self.cfg)
                    pending = pending[1:]
                    continue
                for item in pending[:batch]:
                    yield item, self._alone(item)
                pending = pending[batch:]

    def _drive(self, items: list[Item], batch: int) -> Iterator[tuple[Item, dict]]:
        from rain.search import drive

        tasks = ((item, self._task(item)) for item in items)
        for item, record in drive(self.searcher, tasks, batch_size=batch):
            yield item, failed_record(item, record, self.cfg) if isinstance(record, BaseException) else record

    def _alone(self, item: Item) -> dict:
        try:
            ((_, record),) = self._drive([item], 1)
        except Exception as err:  # noqa: BLE001 - this prompt's own failure
            return failed_record(item, err, self.cfg)
        return record

    def _task(self, item: Item):
        """One prompt's record as a request generator: a skip with its reason, or the answers."""
        import rain
        from rain.decoding import answer_task

        cfg, seed = self.cfg, self.cfg.search.seed + item.id
        question = rain.prompt_text(self.tokenizer, item.prompt, cfg.prompt)
        reason = too_long(self.tokenizer, item, cfg)
        if reason is not None:
            return skipped_record(item, question=question, seed=seed, reason=reason)
        out = yield from answer_task(self.searcher, item.prompt, seed, cfg.run.mode)
        return ok_record(item, question=question, seed=seed, rain=out["rain"], vanilla=out["vanilla"])


def default_answerer(cfg: RainConfig) -> SearchAnswerer:
    """The RAIN/vanilla answerer over the configured model."""
    return SearchAnswerer(cfg)


def answer_or_error(answer: Answerer, item: Item, cfg: RainConfig) -> dict:
    """`answer(item)`, or when it fails, an error record with the reason (the traceback goes to the log): one
    failing prompt never stops the others. Every record carries the item's content key."""
    try:
        record = answer(item)
    except Exception as err:  # the per-prompt fault boundary: tokenizer errors, out of memory, NaN logits
        return failed_record(item, err, cfg)
    return {**record, "key": item.key} if isinstance(record, dict) else record


def failed_record(item: Item, err: BaseException, cfg: RainConfig) -> dict:
    """The error record of a prompt whose answer raised `err`; its traceback goes to the log."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    print(f"[prompt id {item.id}] failed, recorded with status 'error':\n{text}", file=sys.stderr, flush=True)
    _free_gpu_memory()
    return error_record(item, seed=cfg.search.seed + item.id, error=err)


def _free_gpu_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_answerer(spec: Optional[str]) -> Callable[[RainConfig], Answerer]:
    """'module:function' -> the function (cfg -> answerer); None -> `default_answerer`."""
    if spec is None:
        return default_answerer
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"--answerer must look like module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ValueError(f"--answerer {spec}: cannot import {module!r} ({err}); is it on PYTHONPATH?") from None
    except AttributeError:
        raise ValueError(f"--answerer {spec}: module {module!r} has no {name!r}") from None


# ----------------------------------------------------------------------------- a shard

def hardware() -> dict:
    """CPU count and the names of the GPUs this process sees."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu_count": os.cpu_count(), "machine": platform.machine(), "system": platform.system(), "gpus": gpus,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def place_on_local_gpu(cfg: RainConfig, rank: Rank) -> RainConfig:
    """Under torchrun with GPUs: put an auto-placed model on the GPU of this local rank."""
    import torch

    count = torch.cuda.device_count()
    if rank.local_rank is None or count == 0 or cfg.model.device != "auto" or cfg.model.device_map is not None:
        return cfg
    return cfg.replace(model={"device": f"cuda:{rank.local_rank % count}"})


def todo_items(items: list[Item], paths: RunPaths, *, rank: Rank, plan: Optional[list[int]],
               retry_errors: bool = False) -> list[Item]:
    """This rank's unfinished prompts: every world-th id of the plan (default: the selection). A prompt is
    finished when a record has its id and content (an error record only when not `retry_errors`)."""
    by_id = {item.id: item for item in items}
    candidates = plan if plan is not None else [item.id for item in items]
    done = done_ids(paths, items, retry_errors=retry_errors)
    return [by_id[i] for i in candidates[rank.rank::rank.world] if i in by_id and i not in done]


def run_shard(cfg: RainConfig, *, rank: Rank, items: Optional[list[Item]] = None, plan: Optional[list[int]] = None,
              make_answerer: Callable[[RainConfig], Answerer] = default_answerer) -> int:
    """Answer this rank's unfinished prompts (of `items`, default: the run's selection), appending each
    record at once; returns how many were written."""
    paths = RunPaths(Path(cfg.run.outdir), run_name(cfg))
    items = load_items(cfg.run) if items is None else items
    todo = todo_items(items, paths, rank=rank, plan=plan, retry_errors=cfg.run.retry_errors)
    shard = paths.shard(rank=rank.rank, world=rank.world)
    print(f"[rank {rank.rank}/{rank.world}] {len(todo)} prompts to answer -> {shard}", flush=True)
    if not todo:
        return 0
    answer = make_answerer(cfg)
    records = (answer.many(todo) if isinstance(answer, SearchAnswerer)
               else ((item, answer_or_error(answer, item, cfg)) for item in todo))
    started = time.perf_counter()
    with ShardWriter(shard) as writer:
        for number, (item, record) in enumerate(records, start=1):
            writer.append(record)
            print(f"[rank {rank.rank}/{rank.world}] id {item.id} done ({number}/{len(todo)}, "
                  f"{time.perf_counter() - started:.1f} s)", flush=True)
    return len(todo)


def merge_if_complete(cfg: RainConfig, *, items: list[Item]) -> Optional[Path]:
    """Write the merged JSON if every selected prompt is finished (used by torchrun ranks)."""
    paths = RunPaths(Path(cfg.run.outdir), run_name(cfg))
    records = collect(paths, items=items)
    if not {item.id for item in items} <= {record["id"] for record in records}:
        return None
    return merge(paths, records=records)


# ----------------------------------------------------------------------------- entry point

def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m rain.worker", allow_abbrev=False,
                                     description="Answer one shard of a benchmark (see rain/parallel.py).")
    parser.add_argument("--config", action="append", default=[], help="YAML config file (repeatable, in order)")
    parser.add_argument("--rank", type=int, help="this worker's index (default: RANK from torchrun, else 0)")
    parser.add_argument("--world", type=int, help="number of workers (default: WORLD_SIZE, else 1)")
    parser.add_argument("--plan", help="JSON file {'ids': [...]}: the candidate prompt ids, split by rank")
    parser.add_argument("--answerer", help="module:function taking the config and returning item -> record "
                                           "(default: RAIN/vanilla generation with rain.load_model)")
    parser.add_argument("--launcher-pid", type=int, help="set by the launcher: end when that process dies")
    args, rest = parser.parse_known_args(argv)
    bad = [text for text in rest if "=" not in text]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (overrides look like key=value)")
    return args, rest


def read_plan(path: Optional[str]) -> Optional[list[int]]:
    """The launcher's plan file: {'ids': [...]}; a damaged one is a ValueError naming it."""
    if path is None:
        return None
    try:
        ids = json.loads(Path(path).read_text(encoding="utf-8"))["ids"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"plan file {path} is unreadable ({type(err).__name__}); rerun the launcher") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"plan file {path} does not hold a list of prompt ids; rerun the launcher")
    return ids


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; a bad config, data file, model, output or header is one message and exit status 2."""
    args, overrides = parse_args(argv)
    plain_warnings("rain.worker")
    if args.launcher_pid is not None:
        stop_with_parent(args.launcher_pid)
    under_launcher = args.rank is not None
    try:
        rank = Rank(rank=args.rank, world=args.world or 1) if under_launcher else (rank_from_env() or Rank())
        cfg = load_config(args.config, overrides)
        paths = RunPaths(Path(cfg.run.outdir), run_name(cfg))
        if not under_launcher:
            check_writable_dir(paths.outdir)
        lock = None if under_launcher else RunLock(paths.lock, shared=True)  # the launcher holds it for us
        with lock or contextlib.nullcontext():
            return _work(cfg, paths, args=args, rank=rank, under_launcher=under_launcher)
    except (ValueError, FileNotFoundError) as err:  # these name the file, line, field or value
        print(f"rain.worker: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # Ctrl-C reaches the launcher's whole process group; it reports it
        print("rain.worker: interrupted", file=sys.stderr, flush=True)
        return 130


def _work(cfg: RainConfig, paths: RunPaths, *, args: argparse.Namespace, rank: Rank, under_launcher: bool) -> int:
    selection = load_selection(cfg.run)
    items = selection.items
    if not under_launcher:  # the launcher wrote the header already
        note = write_or_check_meta(paths, cfg, hardware=hardware(), selection=selection)
        if note:
            print(f"[rank {rank.rank}/{rank.world}] {note}", flush=True)
        cfg = place_on_local_gpu(cfg, rank)
    plan = read_plan(args.plan)
    run_shard(cfg, rank=rank, items=items, plan=plan, make_answerer=load_answerer(args.answerer))
    if not under_launcher:
        merged = merge_if_complete(cfg, items=items)
        note = f"merged output: {merged}" if merged else "other ranks still running; the last one merges"
        print(f"[rank {rank.rank}/{rank.world}] {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
