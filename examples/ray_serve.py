"""Scale `pal-adapters serve` past one process with Ray Serve: 2 replicas of one saved model.

Each Ray Serve replica runs the package's own app (``pal_adapters.serve.create_app``, through
``serve.ingress``): the same routes, limits, errors and cross-task batcher as ``pal-adapters
serve``; Ray adds the replicas, its HTTP proxy and the routing of each request to the replica
with the shorter queue. ``@serve.batch`` is not used: it batches the calls of one Python method,
so mixing tasks in one forward, the token limits and QA windows would have to be written again
next to the batcher that already does them (see docs/serving.md, "Scaling past one process").

    pip install -e ".[serve,ray]"
    python examples/ray_serve.py                        # builds a small MiniLM model (random adapters)
    python examples/ray_serve.py runs/glue_ner_qa/best  # or serves a trained model folder

Everything listens on 127.0.0.1 only (Ray's node address and Serve's proxy, on a free port); a
few requests, one per task and then a mixed round, are sent concurrently, and each answer is
compared with ``pal_adapters.predict.predict_rows`` for that task and input (to 1e-5). The whole
run is bounded by ``--timeout``; Serve and Ray are shut down however it ends. Exit 0 when every
answer matched and every replica answered.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Before Ray is imported (it reads them then) and started (its workers inherit them): offline
# models, no usage report, and the single-machine mode Ray uses on macOS, whose node address is
# 127.0.0.1 (on Linux Ray otherwise turns even an explicit 127.0.0.1 into the machine's address).
for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                      "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(_name, _value)

SENTENCES = ("a gripping, funny film with a moving ending", "a dull, lifeless plot and wooden acting",
             "John Smith loved the film he saw in Paris last May.")
QA = {"question": "Where did John see the film?", "context": SENTENCES[2]}
PAIR = {"text": "A man is playing a guitar.", "text_b": "A person plays music."}


def build_demo_model(folder: Path) -> Path:
    """MiniLM (packaged) with four PAL tasks of four kinds and random adapter weights, saved."""
    import torch

    from pal_adapters import TaskConfig, add_pal
    from pal_adapters.training.setup import load_backbone

    backbone, _ = load_backbone("minilm")
    tags = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    tasks = {"sst2": TaskConfig(num_labels=2, labels=("negative", "positive"), dropout=0.0),
             "stsb": TaskConfig(type="regression", dropout=0.0),
             "ner": TaskConfig(type="token_classification", num_labels=len(tags), labels=tags, dropout=0.0),
             "squad": TaskConfig(type="extractive_qa", dropout=0.0, max_length=256)}
    model = add_pal(backbone, tasks, adapter="pal")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-identity adapters, so every task's answer differs
        for name, p in model.named_parameters():
            if "pal_adapters." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.save_pretrained(folder / "model")


def replica_deployment(model_dir: str, replicas: int, threads: int) -> Any:
    """A Ray Serve application: ``replicas`` copies of the package's app, each loading ``model_dir``."""
    from ray import serve

    def build_app() -> Any:  # runs in each replica's process, once
        import torch

        from pal_adapters.serve import ServeSettings, create_app
        from pal_adapters.serve.cli import load_model

        torch.set_num_threads(threads)
        model, tokenizer = load_model(model_dir, None, "cpu")
        return create_app(model, tokenizer, ServeSettings(max_wait_ms=5.0),
                          info={"model_dir": model_dir, "replica_pid": os.getpid()})

    @serve.ingress(build_app)
    class PalAdapters:
        def check_health(self) -> None:
            """Ray's replica health check: the model's worker thread must be alive."""
            if not self.app.state.serve.batcher.alive:
                raise RuntimeError("the model's worker thread has stopped")

    # max_ongoing_requests: Ray's default (5) would let at most 5 requests reach a replica's
    # batcher at once, capping a forward at 5 requests; let the batcher's own queue bound it.
    return serve.deployment(PalAdapters, name="pal_adapters", num_replicas=replicas, max_ongoing_requests=256,
                            ray_actor_options={"num_cpus": threads}, graceful_shutdown_timeout_s=30).bind()


def rows_for(task: dict[str, Any]) -> list[Any]:
    """Inputs a task of this type and input form reads (``GET /tasks`` entry)."""
    if task["type"] == "extractive_qa":
        return [QA]
    if task["inputs"] == "pair":
        return [PAIR]
    return list(SENTENCES[:2]) if task["type"] != "token_classification" else [SENTENCES[2]]


def close(got: Any, want: Any) -> bool:
    """Equal structure, floats within 1e-5 (as the server's tests compare)."""
    if isinstance(want, float):
        return isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5)
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(close(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(close, got, want))
    return got == want


def check_answers(base: str, model: Any, tokenizer: Any, rounds: int) -> bool:
    """One request per task, then ``rounds`` more for every task, sent concurrently; each answer vs predict_rows."""
    import httpx

    from pal_adapters.predict import predict_rows
    from pal_adapters.training.report import to_jsonable

    with httpx.Client(base_url=base, timeout=60) as http:
        tasks = http.get("/tasks").json()["tasks"]
        requests = [(t["name"], rows_for(t)) for t in tasks] * (1 + rounds)
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda r: http.post("/predict", json={"task": r[0], "inputs": r[1]}), requests))
    ok = True
    for (task, inputs), response in zip(requests, responses, strict=True):
        rows = [{"text": x} if isinstance(x, str) else x for x in inputs]
        want = to_jsonable([predict_rows(model, tokenizer, [row], [task])[0][0][task] for row in rows])
        got = response.json().get("predictions") if response.status_code == 200 else response.text
        same = close(got, want)
        ok &= same
        print(f"{task:6s} HTTP {response.status_code}  served {shorten(got)}\n"
              f"{'':6s} predict_rows  {shorten(want)}  -> {'equal' if same else 'DIFFERENT'}")
    return ok


def shorten(value: Any, width: int = 150) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width - 5] + " ..."


def replicas_answering(base: str, replicas: int, tries: int = 40) -> set[int]:
    """The replica processes that answer ``GET /info`` (bounded: at most ``tries`` requests)."""
    import httpx

    seen: set[int] = set()
    with httpx.Client(base_url=base, timeout=30) as http:
        for _ in range(tries):
            seen.add(http.get("/info").json()["replica_pid"])
            if len(seen) == replicas:
                break
    return seen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(model_dir: str, replicas: int, threads: int, rounds: int) -> int:
    """Start Ray (local, 127.0.0.1) and Serve, deploy, check the answers; always shut both down."""
    import ray
    from ray import serve

    from pal_adapters.cli_run import load_saved

    started = time.perf_counter()
    ray.init(num_cpus=replicas * threads, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(replica_deployment(model_dir, replicas, threads), name="pal", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        state = serve.status().applications["pal"].deployments["pal_adapters"].replica_states
        print(f"Ray {ray.__version__} Serve: {base}, replicas {dict(state)}, ready after "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        model, tokenizer = load_saved(model_dir, None)
        ok = check_answers(base, model, tokenizer, rounds)
        pids = replicas_answering(base, replicas)
        print(f"replica processes that answered GET /info: {sorted(pids)}")
        ok &= len(pids) == replicas
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"{'every answer equals predict_rows' if ok else 'FAILED'}; Serve and Ray shut down "
          f"({time.perf_counter() - started:.1f} s in all)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", nargs="?", help="a saved model folder (default: build a small one)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per replica")
    parser.add_argument("--rounds", type=int, default=1, help="mixed rounds after the first request per task")
    parser.add_argument("--timeout", type=int, default=600, help="seconds for the whole run")
    args = parser.parse_args()

    def out_of_time(sig: int, frame: Any) -> None:
        raise TimeoutError(f"examples/ray_serve.py ran past --timeout {args.timeout} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.timeout)  # a TimeoutError still runs run()'s shutdown
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(build_demo_model(Path(tmp)))
        return run(model_dir, args.replicas, args.threads, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
