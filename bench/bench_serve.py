"""`rain serve` throughput: requests per hour with 1 and with 8 concurrent clients (issue 10).

    OMP_NUM_THREADS=2 python bench/bench_serve.py [--clients 1 8] [--requests 8] [--cap 8] [--max-tokens 16]

An in-process server (uvicorn on a free loopback port, the real HTTP path) over the embedded model
(configs/models/embedded.yaml: SmolLM2-135M-Instruct, chat template, the MiniLM embedder) with a fixed
cap of inner iterations per answer (search.max_total_iterations) and max_tokens per request, so every
request costs about the same search. The prompts are the 8 short questions of rain/data/demo_prompts.jsonl.
Each client sends its requests one after another:
- 1 client: --requests requests in a row;
- C > 1 clients, all at once: each sends max(1, --requests // 4) requests.
Printed per run: requests, wall seconds, requests/hour, mean latency, and the engine's sequential forward
passes and mean rows per forward (how much the concurrent searches shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_batch import demo_questions  # bench/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "rain-embedded"


def start_server(service):
    import uvicorn

    from rain.serve import build_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(service, model_id=MODEL), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return server, thread, sock.getsockname()[1]


def run(port: int, service, clients: int, per_client: int, questions: list, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=3600)
    engine = service.base.engine
    forwards, rows = engine.batches.forwards, engine.batches.rows
    latencies = []

    def one_client(c: int) -> None:
        for r in range(per_client):
            i = (c * per_client + r) % len(questions)
            t0 = time.perf_counter()
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": questions[i]}],
                                                    max_tokens=max_tokens, seed=i)
            latencies.append(time.perf_counter() - t0)
            assert answer.rain["stats"]["inner_iterations"] > 0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - t0
    n = clients * per_client
    forwards, rows = engine.batches.forwards - forwards, engine.batches.rows - rows
    return {"clients": clients, "requests": n, "wall_s": round(wall, 1), "requests_per_hour": round(n * 3600 / wall),
            "mean_latency_s": round(sum(latencies) / n, 1), "forwards": forwards,
            "rows_per_forward": round(rows / max(forwards, 1), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=8, help="requests of the 1-client run (see the module docstring)")
    p.add_argument("--cap", type=int, default=8, help="search.max_total_iterations per answer")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    args = p.parse_args()

    import torch

    import rain
    from rain.service import RainService

    cfg = rain.load_config(ROOT / "configs" / "models" / "embedded.yaml", [f"max_total_iterations={args.cap}"])
    model, tok = rain.load_model(cfg.model)
    service = RainService(model, tok, cfg, batch_size=args.batch_size, queue_size=64, timeout_s=None)
    server, thread, port = start_server(service)
    questions = demo_questions()
    print(f"# rain serve bench: embedded model, max_total_iterations={args.cap}, max_tokens={args.max_tokens}, "
          f"batch_size={args.batch_size}, torch threads={torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}", flush=True)
    try:
        run(port, service, 1, 1, questions, args.max_tokens)  # warm-up, not counted
        for clients in args.clients:
            per_client = args.requests if clients == 1 else max(1, args.requests // 4)
            print(json.dumps(run(port, service, clients, per_client, questions, args.max_tokens)), flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=120)


if __name__ == "__main__":
    main()
