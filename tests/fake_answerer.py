"""A test-only answerer for `--answerer fake_answerer:make`: instant, deterministic, no model.

The answer is a function of the prompt and the per-prompt seed, so the merged output is the same
for any number of workers. Ids listed in the FAKE_FAIL_IDS environment variable (comma-separated)
make the worker raise, to test failure reporting; this switch lives in the tests only. Each record
also says which GPUs its worker was given (`worker_gpus`), to check the launcher's placement.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from rain.records import ok_record


@dataclass
class FakeStats:
    seconds: float = 0.0
    new_tokens: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FakeResult:
    text: str
    stats: FakeStats


def make(cfg):
    fail = {int(i) for i in os.environ.get("FAKE_FAIL_IDS", "").split(",") if i.strip()}
    crash = {int(i) for i in os.environ.get("FAKE_CRASH_IDS", "").split(",") if i.strip()}

    def answer(item):
        if item.id in crash:
            print(f"fake crash on prompt id {item.id}", flush=True)
            os._exit(1)
        if item.id in fail:
            raise RuntimeError(f"fake failure on prompt id {item.id}")
        seed = cfg.search.seed + item.id
        record = ok_record(item, question=f"Human: {item.prompt}\nAssistant:", seed=seed,
                         rain=FakeResult(f"rain answer {seed} to {item.prompt}", FakeStats()),
                         vanilla=FakeResult(f"vanilla answer to {item.prompt}", FakeStats()))
        return {**record, "worker_gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    return answer
