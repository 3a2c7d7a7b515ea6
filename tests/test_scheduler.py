"""The continuous-batching scheduler: every sequence equals the same request generated alone (so
slots, shared prefills, copied prefixes and chunked prompts never mix sequences), a finished slot
takes the next request at once, prompts shared within a group are decoded once, cancel and
errors end only what they should, and submit/serve work across threads."""

import rast_gguf  # noqa: F401

import dataclasses
import threading

import pytest

from rast_gguf import DeltaPair, RastEngine, SamplingParams, generate
from rast_gguf.errors import DecodeError, PromptTooLongError, QueueFullError
from rast_gguf.scheduler import Scheduler, SeqRequest

GREEDY = SamplingParams(temp=0, seed=1)


@pytest.fixture(scope="module")
def pairs(triple):
    return [DeltaPair(str(triple.tuned), str(triple.base), 0.5)]


@pytest.fixture(scope="module")
def alone(triple, pairs):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1) as engine:
        yield engine


def expected(alone, request: SeqRequest):
    """The request generated alone, by the single-sequence path."""
    if request.alpha is not None:
        alone.set_alpha(request.alpha)
    try:
        r = generate(alone, list(request.prompt), max_tokens=request.max_tokens, sampling=request.sampling,
                     stop=request.stop, ignore_eos=request.ignore_eos)
    finally:
        alone.set_alpha(0.5)
    return r.tokens, r.text, r.finish_reason


class Collect:
    """on_event that keeps every event, and the step it came in."""

    def __init__(self, scheduler=None):
        self.events, self.scheduler = [], scheduler

    def __call__(self, event):
        self.events.append((event, self.scheduler.stats.steps if self.scheduler else None))

    def of(self, index):
        return [e for e, _ in self.events if e.index == index]

    def result(self, index):
        events = self.of(index)
        assert [e.finish_reason is not None for e in events].count(True) == 1 and events[-1].finish_reason
        tokens = [e.token for e in events if e.token >= 0]
        return tokens, "".join(e.text for e in events), events[-1].finish_reason


def tokens_of(engine, text):
    return tuple(engine.tokenize(text))


def test_many_groups_on_few_slots_equal_each_request_alone(triple, pairs, alone):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=3) as engine:
        sched = Scheduler(engine)
        groups = []
        for i, text in enumerate(["Once upon a time", "Question: 3 + 4 = ?\nAnswer:", "Hello", "The quick brown fox",
                                  "One, two, three,"]):
            prompt = tokens_of(engine, text)
            requests = [SeqRequest(prompt, SamplingParams(temp=0.9 if k else 0, seed=100 * i + k), 4 + 3 * i,
                                   stop=(" t",) if i == 4 else (), alpha=-1.0 if i == 3 else None)
                        for k in range(1 + i % 3)]
            collect = Collect()
            groups.append((sched.submit(requests, collect), requests, collect))
        sched.run_until_idle()
        stats = sched.stats
    for ticket, requests, collect in groups:
        assert ticket.done.is_set()
        for k, request in enumerate(requests):
            assert collect.result(k) == expected(alone, request), (ticket, k)
    assert stats.tokens_generated == sum(len(c.result(k)[0]) for _, rs, c in groups for k in range(len(rs)))
    assert stats.slots_busy == 0 and stats.queue_len == 0


def test_identical_prompts_of_a_group_prefill_once(triple, pairs, alone):
    text = "Question: a train travels 40 km in 2 hours. What is its average speed?\nAnswer:"
    for n_slots, extra in ((4, 0), (1, 3), (2, 2)):
        with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=n_slots) as engine:
            prompt = tokens_of(engine, text)
            sched = Scheduler(engine)
            requests = [SeqRequest(prompt, SamplingParams(temp=1.0, seed=k), 6) for k in range(4)]
            collect = Collect()
            sched.submit(requests, collect)
            sched.run_until_idle()
            stats = sched.stats
        assert stats.prompt_tokens_requested == 4 * len(prompt)
        # one prefill; a slot that reuses its own cached prompt decodes only the last prompt token again
        assert stats.prompt_tokens_decoded <= len(prompt) + extra, (n_slots, stats)
        results = [collect.result(k) for k in range(4)]
        assert results == [expected(alone, r) for r in requests]
        assert len({tuple(r[0]) for r in results}) >= 2  # their own seeds: not copies of one sample


def test_a_new_prompt_copies_a_running_slots_prefix(triple, pairs, alone):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=2) as engine:
        shared = tokens_of(engine, "Question: what is the sum of 12, 345, 67 and 890? Think step by step.")
        sched = Scheduler(engine)
        first, second = Collect(), Collect()
        r1 = SeqRequest(shared, GREEDY, 12, ignore_eos=True)
        r2 = SeqRequest(shared + tuple(engine.tokenize(" Answer:", add_special=False)), GREEDY, 8, ignore_eos=True)
        sched.submit([r1], first)
        for _ in range(3):
            sched.step()  # the first sequence is generating in slot 0
        decoded = sched.stats.prompt_tokens_decoded
        sched.submit([r2], second)
        sched.run_until_idle()
        stats = sched.stats
    assert decoded == len(shared)
    assert stats.prompt_tokens_decoded - decoded <= len(r2.prompt) - len(shared)  # the shared part was copied
    assert first.result(0) == expected(alone, r1) and second.result(0) == expected(alone, r2)


def test_long_prompts_are_chunked_beside_running_sequences(triple, pairs, alone):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_batch=16, n_seq_max=2) as engine:
        sched = Scheduler(engine)
        short = SeqRequest(tokens_of(engine, "Hi"), GREEDY, 12, ignore_eos=True)
        long = SeqRequest(tokens_of(engine, "word " * 60), GREEDY, 3, ignore_eos=True)
        assert len(long.prompt) > 3 * engine.n_batch
        a, b = Collect(sched), Collect(sched)
        sched.submit([short], a)
        sched.step()
        sched.submit([long], b)
        sched.run_until_idle()
    steps_a = [step for _, step in a.events]
    assert steps_a == list(range(1, 13))  # one token every step, also while the long prompt was prefilled
    first_b = b.events[0][1]
    assert first_b > 4  # the long prompt took several steps of at most n_batch entries
    assert a.result(0) == expected(alone, short) and b.result(0) == expected(alone, long)


def test_a_finished_slot_takes_the_next_request_in_the_next_step(triple, pairs):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=2) as engine:
        sched = Scheduler(engine)
        collect = Collect(sched)
        lengths = [2, 9, 3, 4]
        sched.submit([SeqRequest(tokens_of(engine, f"Item {i}:"), GREEDY, n, ignore_eos=True)
                      for i, n in enumerate(lengths)], collect)
        sched.run_until_idle()
        stats = sched.stats
    first = {i: collect.events[[e.index for e, _ in collect.events].index(i)][1] for i in range(4)}
    last = {e.index: step for e, step in collect.events if e.finish_reason}
    assert first[0] == first[1] == 1 and last[0] == 2 and last[1] == 9
    assert first[2] == last[0] + 1 and first[3] == last[2] + 1  # no step with an idle slot while one waits
    assert stats.steps == 9 and stats.busy_slot_steps == 18 == stats.total_slot_steps
    # requests waited at the start of steps 1-6 (the last one admitted at step 6), both slots busy in each
    assert stats.queued_steps == 6 and stats.queued_busy_slot_steps == 12 and stats.occupancy_queued == 1.0


def test_cancel_ends_a_group_and_frees_its_slots(triple, pairs, alone):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=2) as engine:
        sched = Scheduler(engine)
        keep, drop, queued = Collect(), Collect(), Collect()
        r_keep = SeqRequest(tokens_of(engine, "Keep going"), GREEDY, 10, ignore_eos=True)
        sched.submit([r_keep], keep)
        t_drop = sched.submit([SeqRequest(tokens_of(engine, "Drop me"), GREEDY, 50, ignore_eos=True)], drop)
        t_queued = sched.submit([SeqRequest(tokens_of(engine, "Never"), GREEDY, 5)] * 2, queued)
        for _ in range(3):
            sched.step()
        sched.cancel(t_drop)
        sched.cancel(t_queued)
        sched.run_until_idle()
        assert sched.stats.slots_busy == 0
    assert drop.events[-1][0].finish_reason == "cancelled" and drop.events[-1][0].token == -1
    assert len(drop.events) == 4  # three tokens, then the cancel
    assert [e.finish_reason for e, _ in queued.events] == ["cancelled", "cancelled"]
    assert t_drop.done.is_set() and t_queued.done.is_set()
    assert keep.result(0) == expected(alone, r_keep)


def test_submit_from_other_threads_while_serving(triple, pairs, alone):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=3) as engine:
        sched = Scheduler(engine)
        stop = threading.Event()
        server = threading.Thread(target=sched.serve, args=(stop,))
        server.start()
        results = {}

        def client(i):
            request = SeqRequest(tokens_of(engine, f"Client {i} says"), SamplingParams(temp=0.8, seed=i), 6)
            collect = Collect()
            ticket = sched.submit([request], collect)
            assert ticket.done.wait(timeout=120)
            results[i] = (request, collect.result(0))

        clients = [threading.Thread(target=client, args=(i,)) for i in range(5)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        stop.set()
        server.join(timeout=60)
        assert not server.is_alive()
    assert sorted(results) == list(range(5))
    for request, got in results.values():
        assert got == expected(alone, request)


def test_bad_requests_full_queue_and_failed_steps(triple, pairs, monkeypatch):
    with RastEngine(triple.large, pairs, n_ctx=64, n_threads=1, n_seq_max=2) as engine:
        sched = Scheduler(engine, max_queue=1)
        with pytest.raises(PromptTooLongError, match="each sequence's context holds"):
            sched.submit([SeqRequest(tuple(10 + i % 500 for i in range(engine.n_ctx)), GREEDY, 4)], Collect())
        with pytest.raises(PromptTooLongError, match="empty"):
            sched.submit([SeqRequest((), GREEDY, 4)], Collect())
        failing = Collect()
        sched.submit([SeqRequest(tokens_of(engine, "Fail"), GREEDY, 8)] * 2, failing)
        with pytest.raises(QueueFullError):
            sched.submit([SeqRequest(tokens_of(engine, "Later"), GREEDY, 4)], Collect())

        real = engine.decode_entries
        calls = []

        def decode_once_broken(*args):
            calls.append(1)
            if len(calls) == 2:
                raise DecodeError("llama_decode failed: simulated")
            return real(*args)

        monkeypatch.setattr(engine, "decode_entries", decode_once_broken)
        sched.run_until_idle()
        assert [e.finish_reason for e, _ in failing.events if e.finish_reason] == ["error", "error"]
        after = Collect()
        request = SeqRequest(tokens_of(engine, "Fail"), GREEDY, 5, ignore_eos=True)
        sched.submit([request], after)  # the queue is free again, and the next step works
        sched.run_until_idle()
    assert after.result(0)[2] == "length" and len(after.result(0)[0]) == 5


def test_a_failing_callback_ends_its_group_only(triple, pairs, alone):
    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=2) as engine:
        sched = Scheduler(engine)
        good = Collect()
        r_good = SeqRequest(tokens_of(engine, "Good"), GREEDY, 6, ignore_eos=True)
        sched.submit([r_good], good)

        def broken(event):
            raise RuntimeError("disk full")

        bad = sched.submit([SeqRequest(tokens_of(engine, "Bad"), GREEDY, 6)], broken)
        with pytest.raises(RuntimeError, match="disk full"):
            sched.run_until_idle()
        sched.run_until_idle()
        assert bad.done.is_set() and sched.stats.slots_busy == 0
    assert good.result(0) == expected(alone, r_good)


def test_logprobs_and_changed_flags(triple, pairs, alone):
    import numpy as np

    with RastEngine(triple.large, pairs, n_ctx=160, n_threads=1, n_seq_max=2) as engine:
        sched = Scheduler(engine)
        collect = Collect()
        prompt = tokens_of(engine, "The answer is")
        sched.submit([SeqRequest(prompt, GREEDY, 6, n_logprobs=3, ignore_eos=True),
                      SeqRequest(prompt, dataclasses.replace(GREEDY, temp=0.7, top_k=5), 6, n_logprobs=0,
                                 ignore_eos=True)], collect)
        sched.run_until_idle()
        changed = sched.stats.changed_tokens
    greedy, sampled = collect.of(0), collect.of(1)
    for e in greedy:
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0][0] == e.token
        assert e.logprob == e.top_logprobs[0][1] and e.top_logprobs[0][1] >= e.top_logprobs[1][1]
    for e in sampled:
        assert e.top_logprobs is None and e.logprob <= 0 and np.isfinite(e.logprob)
    assert changed == sum(e.changed for e in greedy + sampled)


def test_the_kv_cache_of_every_slot_is_counted_before_loading(triple, pairs, monkeypatch):
    """-c is per sequence: -np 16 needs 16 times the KV cache, and is refused up front when it cannot fit."""
    from rast_gguf import memory
    from rast_gguf.errors import OutOfMemoryError

    models = [(triple.large, -1), (triple.tuned, -1), (triple.base, -1)]
    need = {n: sum(e.total for e in memory.check_fits(models, n_ctx=256 * n, free_bytes=1 << 50))
            for n in (1, 16)}
    assert need[16] > need[1]
    monkeypatch.setattr(memory, "gpu_offload_supported", lambda: True)
    monkeypatch.setattr(memory, "gpu_free_bytes", lambda: (need[1] + need[16]) // 2 + memory.CUDA_CONTEXT_BYTES)
    gpu_pairs = [DeltaPair(p.tuned, p.base, p.alpha, -1) for p in pairs]
    with RastEngine(triple.large, gpu_pairs, n_ctx=256, n_gpu_layers=-1, n_threads=1, n_seq_max=1) as engine:
        assert engine.n_ctx >= 256
    with pytest.raises(OutOfMemoryError, match="smaller -c"):
        RastEngine(triple.large, gpu_pairs, n_ctx=256, n_gpu_layers=-1, n_threads=1, n_seq_max=16)
