"""Routing is private to each call: threads, asyncio tasks and a backward pass on another thread
each get their own task's result, equal bit for bit to the same call made alone.

The GIL switch interval is shortened while the threads run, so that their forwards interleave
at many points (with the default 5 ms a tiny forward often finishes before a switch).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch
from helpers import randomize_adapters, tiny_batch, tiny_model

from pal_adapters import AdapterConfig, TaskConfig, add_pal

ADAPTER = AdapterConfig(kind="pal", lhuc=True, output_activation="gelu", hidden_size=8, num_heads=2, dropout=0.0)
TASKS = ("a", "b", "c", "d")
THREADS = 4
ROUNDS = 12


def build(arch: str = "bert", layers: str = "all", **kw):
    tasks = {t: TaskConfig(num_labels=2 + i, dropout=0.0) for i, t in enumerate(TASKS)}
    model = add_pal(tiny_model(arch, **kw), tasks, adapter=ADAPTER.replace(layers=layers))
    randomize_adapters(model)
    model.set_task("a")  # a model-wide default that no call below relies on
    return model.eval()


def batch_for(i: int) -> dict[str, torch.Tensor]:
    """A different input (and batch size) per thread, so rows and masks cannot be swapped unnoticed."""
    return tiny_batch(batch=2 + i % 3, length=7 + i, seed=10 + i, pad_rows=(1,))


@contextmanager
def frequent_switches():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run_threads(work: Callable[[int, int], object], threads: int = THREADS, rounds: int = ROUNDS) -> dict:
    """``work(thread, round)`` in ``threads`` threads started together; results keyed by (thread, round)."""
    results, errors = {}, []
    barrier = threading.Barrier(threads)

    def worker(i: int) -> None:
        barrier.wait()
        try:
            for r in range(rounds):
                results[i, r] = work(i, r)
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    with frequent_switches(), torch.no_grad():
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    if errors:
        raise errors[0]
    return results


def assert_equal(got, expected, what: str) -> None:
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), what
        for k in expected:
            assert_equal(got[k], expected[k], f"{what}[{k}]")
        return
    assert torch.equal(got, expected), f"{what}: max difference {(got - expected).abs().max().item():.3g}"


def check_against_sequential(work: Callable[[int, int], object]) -> None:
    """Every threaded result equals the one computed alone, one call at a time."""
    with torch.no_grad():
        expected = {(i, r): work(i, r) for i in range(THREADS) for r in range(ROUNDS)}
    got = run_threads(work)
    wrong = [key for key in expected if not _same(got[key], expected[key])]
    assert not wrong, f"{len(wrong)} of {len(expected)} threaded results differ from the sequential ones: {wrong[:5]}"


def _same(got, expected) -> bool:
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    return torch.equal(got, expected)


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_threads_with_one_task_each_get_their_own_task(arch):
    model = build(arch)
    batches = [batch_for(i) for i in range(THREADS)]
    check_against_sequential(lambda i, r: model(**batches[i], task=TASKS[i]).logits)


def test_a_thread_switching_tasks_between_calls_with_use_task():
    model = build()
    batches = [batch_for(i) for i in range(THREADS)]

    def work(i: int, r: int) -> torch.Tensor:
        with model.use_task(TASKS[(i + r) % len(TASKS)]):
            return model(**batches[i]).logits

    check_against_sequential(work)


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_threads_with_mixed_task_batches(arch):
    model = build(arch)
    batches = [tiny_batch(batch=6, length=8 + i, seed=20 + i, pad_rows=(1, 4)) for i in range(THREADS)]
    task_ids = [[TASKS[(i + k * (i + 1)) % len(TASKS)] for k in range(6)] for i in range(THREADS)]
    check_against_sequential(lambda i, r: model(**batches[i], task_ids=task_ids[(i + r) % THREADS]).logits)


@pytest.mark.parametrize("arch, layers", [("bert", "top_half"), ("bert", "all"), ("albert", "all")])
def test_threads_with_predict_all_and_one_task_calls(arch, layers):
    model = build(arch, layers=layers, num_hidden_layers=4)
    batches = [batch_for(i) for i in range(THREADS)]
    subsets = [list(TASKS), ["c", "a"], ["d", "b", "a"], ["b"]]

    def work(i: int, r: int):
        if (i + r) % 2:  # predict_all and one-task forwards interleave on the same model
            return model.predict_all(tasks=subsets[i], **batches[i])
        return model(**batches[i], task=TASKS[i]).logits

    check_against_sequential(work)


def test_asyncio_tasks_each_keep_their_use_task_across_awaits():
    model = build()
    batches = [batch_for(i) for i in range(THREADS)]

    async def serve(i: int) -> list[torch.Tensor]:
        outs = []
        for r in range(4):
            with model.use_task(TASKS[(i + r) % len(TASKS)]):
                await asyncio.sleep(0)  # the other coroutines enter their own use_task here
                outs.append(model(**batches[i]).logits)
                await asyncio.sleep(0)
                outs.append(model(**batches[i]).logits)
        return outs

    async def main():
        return await asyncio.gather(*(serve(i) for i in range(THREADS)))

    with torch.no_grad():
        got = asyncio.run(main())
        for i in range(THREADS):
            for r in range(4):
                expected = model(**batches[i], task=TASKS[(i + r) % len(TASKS)]).logits
                assert torch.equal(got[i][2 * r], expected) and torch.equal(got[i][2 * r + 1], expected), (i, r)
    assert model.bank.router.active == "a"  # every use_task block restored the default


def test_asyncio_to_thread_inside_one_use_task_block():
    """Threads started with a copy of one context share its routing but not each other's forwards."""
    model = build()
    batches = [batch_for(i) for i in range(THREADS)]

    async def main():
        with model.use_task("c"):
            return await asyncio.gather(*(asyncio.to_thread(_logits, model, batches[i]) for i in range(THREADS)))

    with frequent_switches():
        got = asyncio.run(main())
    with torch.no_grad():
        for i in range(THREADS):
            assert torch.equal(got[i], model(**batches[i], task="c").logits), i


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# ---- gradients: the backward recompute of a checkpointed layer sees its forward's routing -------
def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _train_model(arch: str):
    model = build(arch).train()  # dropout is 0 everywhere, so train mode is deterministic
    model.freeze_backbone(False)
    return model


def _loss(model, batch, mixed: bool) -> torch.Tensor:
    if mixed:
        out = model(**batch, task_ids=["c", "b", "c"][: batch["input_ids"].shape[0]])
        return sum(v.pow(2).sum() for v in out.logits.values())
    return model(**batch, task="b").logits.pow(2).sum()  # not the default task "a"


@pytest.mark.parametrize("mixed", [False, True], ids=["one_task", "mixed"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_backward_in_another_thread_with_checkpointing_equals_plain_backward(arch, reentrant, mixed):
    model = _train_model(arch)
    batch = tiny_batch(batch=3, length=8)
    model.zero_grad(set_to_none=True)
    _loss(model, batch, mixed).backward()
    plain = _grads(model)

    model.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    model.zero_grad(set_to_none=True)
    loss = _loss(model, batch, mixed)
    with model.use_task("d"):  # this thread moves on to another task before the backward runs
        worker = threading.Thread(target=loss.backward)
        worker.start()
        worker.join()
    threaded = _grads(model)
    assert plain.keys() == threaded.keys() and any("pal_adapters" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(threaded[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_concurrent_training_steps_with_checkpointing_in_two_threads():
    """Two threads each run forward + backward of their own task on one checkpointed model."""
    models = {t: _train_model("bert") for t in ("b", "c")}
    batch = tiny_batch(batch=3, length=8)
    expected = {}
    for t, m in models.items():
        m.zero_grad(set_to_none=True)
        m(**batch, task=t).logits.pow(2).sum().backward()
        expected[t] = _grads(m)[f"backbone.pal_adapters.{t}.ts.down.weight"]
    model = _train_model("bert")
    model.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    got: dict[str, list[torch.Tensor]] = {"b": [], "c": []}
    barrier = threading.Barrier(2)

    def train(task: str) -> None:
        barrier.wait()
        for _ in range(6):
            loss = model(**batch, task=task).logits.pow(2).sum()
            grad = torch.autograd.grad(loss, model.bank[task].ts.down.weight)[0]
            got[task].append(grad)

    threads = [threading.Thread(target=train, args=(t,)) for t in got]
    with frequent_switches():
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    for t, grads in got.items():
        assert len(grads) == 6
        for g in grads:
            torch.testing.assert_close(g, expected[t], rtol=1e-5, atol=1e-6)


# ---- what set_task / use_task mean across threads and DataParallel -------------------------------
def test_set_task_is_model_wide_and_use_task_is_local_to_its_thread():
    model = build()
    batch = batch_for(0)
    seen = {}
    with torch.no_grad():
        with model.use_task("c"):
            t = threading.Thread(target=lambda: seen.setdefault("other", model(**batch).logits))
            t.start()
            t.join()
            here = model(**batch).logits
        model.set_task("d")
        t = threading.Thread(target=lambda: seen.setdefault("after_set", model(**batch).logits))
        t.start()
        t.join()
        assert torch.equal(here, model(**batch, task="c").logits)
        assert torch.equal(seen["other"], model(**batch, task="a").logits)  # a new thread sees the default
        assert torch.equal(seen["after_set"], model(**batch, task="d").logits)


def test_a_copied_or_pickled_encoder_has_its_own_router():
    import copy
    import io

    from pal_adapters import AdapterConfig as Config
    from pal_adapters import get_bank, inject_adapters

    model = tiny_model("bert")
    bank = inject_adapters(model, Config(kind="pal", hidden_size=8, num_heads=2), tasks=["a", "b"])
    randomize_adapters(model)
    bank.set_task("b")
    batch = batch_for(0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
        for twin in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
            twin_bank = get_bank(twin)
            assert twin_bank.router is not bank.router and twin_bank.router.active == "b"
            assert torch.equal(twin(**batch).last_hidden_state, expected)
            with twin_bank.use_task("a"):
                assert bank.router.active == "b" and twin_bank.router.active == "a"


def test_data_parallel_on_cpu_calls_the_module_directly():
    model = build()
    batch = batch_for(1)
    with torch.no_grad():
        dp = torch.nn.DataParallel(model)  # no GPU: DataParallel calls the module itself
        assert torch.equal(dp(**batch, task="b").logits, model(**batch, task="b").logits)
        with model.use_task("c"):
            assert torch.equal(dp(**batch).logits, model(**batch, task="c").logits)


def _replicate_on_cpu(model, n: int, monkeypatch) -> list:
    """torch.nn.parallel.replicate as DataParallel calls it, with the GPU broadcast replaced by
    per-replica copies, so the replicas are built exactly as on several GPUs."""
    import importlib

    rep = importlib.import_module("torch.nn.parallel.replicate")  # the module, not the function

    def copies(tensors, devices, detach=False):
        return [[t.detach().clone().requires_grad_(t.requires_grad) for t in tensors] for _ in devices] \
            if tensors else []

    monkeypatch.setattr(rep, "_broadcast_coalesced_reshape", copies)
    return rep.replicate(model, list(range(n)), detach=True)


def test_data_parallel_replicas_on_their_own_threads_use_their_own_adapters_and_the_callers_task(monkeypatch):
    model = build()
    batch = batch_for(2)
    with torch.no_grad():
        expected = {t: model(**batch, task=t).logits for t in TASKS}
        with model.use_task("c"):  # DataParallel replicates in the caller's thread ...
            replicas = _replicate_on_cpu(model, 2, monkeypatch)
        for m in replicas[1].bank["c"].modules():  # replica parameters are plain attributes
            for p in m._former_parameters.values():
                p.zero_()  # replica 1's own copy: its output must show it, replica 0's must not
        model.set_task("d")  # ... and runs each replica on a fresh thread (parallel_apply's _worker)
        got = {}
        calls = {0: {}, 1: {}, 2: {"task": "b"}}

        def work(i: int) -> None:
            with torch.no_grad():
                got[i] = replicas[min(i, 1)](**batch, **calls[i]).logits

        threads = [threading.Thread(target=work, args=(i,)) for i in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for p in model.bank["c"].parameters():
            p.zero_()
        c_zeroed = model(**batch, task="c").logits
    assert torch.equal(got[0], expected["c"])  # the caller's use_task, not the default "d"
    assert torch.equal(got[1], c_zeroed)  # the replica's own adapters acted
    assert torch.equal(got[2], expected["b"])  # a task passed to the call wins


@pytest.mark.slow  # two Dynamo compilations of a BERT: ~20 s on a quiet 2-core machine
def test_compiled_model_routes_each_call_to_its_task():
    """Dynamo traces the routing of ``task=`` into the graph (guarded on the task) and reads a
    ``use_task`` made outside the compiled code from the caller's context."""
    model = build()
    batch = batch_for(0)
    with torch.no_grad():
        expected = {t: model(**batch, task=t).logits for t in ("b", "c")}
        compiled = torch.compile(model, backend="aot_eager")
        torch.testing.assert_close(compiled(**batch, task="b").logits, expected["b"], rtol=1e-5, atol=1e-6)
        with model.use_task("c"):
            torch.testing.assert_close(compiled(**batch).logits, expected["c"], rtol=1e-5, atol=1e-6)
