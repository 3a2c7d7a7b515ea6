"""Continuous batching over a RastEngine's `n_seq_max` slots: many sequences, one step at a time.

A `Scheduler` owns the engine's contexts while it lives. `submit(requests, on_event)` queues a
group of `SeqRequest`s (thread-safe); every `step()` then builds ONE batch that holds the next
token of every generating sequence plus chunks of the prompts being prefilled (at most n_batch
entries, so a long prompt never stalls the others), decodes it in every context (the same batch
in all three), samples every generating row, and calls `on_event` with one `TokenEvent` per
token. A sequence that ends frees its slot at once, and the next waiting request takes it in the
same step. Slot i is KV sequence i in every context; each slot remembers the tokens its cache
holds, so a new prompt starts from the longest prefix it can find: its own slot's cache, another
slot's (copied with llama_memory_seq_cp, which copies a whole KV stream), or a prefill already
under way for the same prompt, which it joins: the prompt is decoded once and its KV copied to
every slot that shares it once the last chunk is in, all of them sampling their first token
from that one output row. `stats` counts prompt tokens requested vs decoded, slot occupancy and
RAST's changed choices. A failed decode ends the sequences of that batch ("error", or "context"
when llama.cpp found no room) and the scheduler goes on. Sampling every row of a step is one call
to `rast_gguf.step_sampler` (C++, a thread pool); this module only keeps the books.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rast_gguf.engine import RastEngine
from rast_gguf.errors import PromptTooLongError, QueueFullError, RastError, UsageError
from rast_gguf.generate import TextSteps, common_prefix
from rast_gguf.sampling import SamplingParams, check_alpha


@dataclass(frozen=True)
class SeqRequest:
    """One sequence to generate."""

    prompt: tuple[int, ...]        # token ids (templated and tokenized, BOS included)
    sampling: SamplingParams       # its own seed (sampling.resolved_seed is used)
    max_tokens: int
    stop: tuple[str, ...] = ()
    alpha: float | None = None     # None: the engine's alphas; else every pair's alpha, this sequence only
    n_logprobs: int | None = None  # None: none; 0: logprob of the chosen token; k > 0: also the top k
    ignore_eos: bool = False


class TokenEvent(NamedTuple):
    """One token of one sequence (or, with token -1, only its end); immutable, cheap to make."""

    index: int                     # position of the request in its submit() group
    token: int                     # -1 on a final event that only carries a finish reason
    text: str                      # text this token adds (stop strings cut, their prefixes held back)
    logprob: float | None          # log p(token) under the distribution sampled from (after the chain)
    top_logprobs: tuple[tuple[int, float], ...] | None
    finish_reason: str | None      # None while going on; "stop" | "length" | "context" | "cancelled" | "error"
    changed: bool                  # RAST chose another token than the large model's own argmax


@dataclass
class SchedulerStats:
    n_slots: int = 0
    slots_busy: int = 0
    queue_len: int = 0                 # requests waiting for a slot
    prompt_tokens_requested: int = 0   # sum of the admitted requests' prompt lengths
    prompt_tokens_decoded: int = 0     # prompt tokens actually decoded (shared and cached prefixes are not)
    tokens_generated: int = 0
    steps: int = 0
    busy_slot_steps: int = 0           # over the steps: slots holding a sequence (prefilling or generating)
    total_slot_steps: int = 0          # steps * n_slots
    changed_tokens: int = 0            # generated tokens where RAST's choice differs from the large argmax
    queued_steps: int = 0              # steps that began with requests waiting for a slot
    queued_busy_slot_steps: int = 0    # busy slots over those steps

    @property
    def occupancy(self) -> float:
        return self.busy_slot_steps / self.total_slot_steps if self.total_slot_steps else 0.0

    @property
    def occupancy_queued(self) -> float:
        """Occupancy over the steps that began with requests waiting (the steady state: without the tail
        of a run, where fewer sequences than slots remain)."""
        return self.queued_busy_slot_steps / (self.queued_steps * self.n_slots) if self.queued_steps else 1.0


class Ticket:
    """A submitted group; `done` is set after the last event of its last sequence."""

    def __init__(self, ticket_id: int, n: int):
        self.id = ticket_id
        self.n = n
        self.cancelled = False
        self.callback_failed = False  # its on_event raised: it is not called again
        self.n_finished = 0
        self.done = threading.Event()

    def __repr__(self) -> str:
        return f"Ticket({self.id}, n={self.n}, finished={self.n_finished})"


@dataclass(eq=False)
class _Seq:
    """One request while it lives."""

    ticket: Ticket
    index: int
    request: SeqRequest
    on_event: Callable[[TokenEvent], None]
    steps: TextSteps
    handle: object = None          # the sampler's per-sequence state
    slot: "_Slot | None" = None


@dataclass(eq=False)
class _Slot:
    seq_id: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV this slot holds, positions 0..len-1
    seq: _Seq | None = None
    todo: list[int] = field(default_factory=list)   # prompt tokens still to decode, from len(cache) on
    followers: list["_Slot"] = field(default_factory=list)  # slots waiting for this prefill's KV
    leader: "_Slot | None" = None                   # set while this slot waits for another's prefill
    next_token: int | None = None                   # generating: the token to decode at len(cache)
    last_used: int = 0

    @property
    def busy(self) -> bool:
        return self.seq is not None or bool(self.todo) or bool(self.followers)

    @property
    def prefilling(self) -> bool:
        return bool(self.todo)


# A cached prefix is copied from another slot (a whole KV stream) only when it saves this many tokens.
MIN_COPY_GAIN = 8


class Scheduler:
    def __init__(self, engine: RastEngine, *, max_queue: int = 0, sampler=None):
        from rast_gguf.step_sampler import StepSampler

        if max_queue < 0:
            raise UsageError(f"max_queue must be >= 0 (0: unbounded), got {max_queue}")
        self.engine = engine
        self.max_queue = max_queue
        self.sampler = sampler or StepSampler(engine)
        self._slots = [_Slot(i) for i in range(engine.n_seq_max)]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._incoming: collections.deque[list[_Seq]] = collections.deque()  # groups submitted, not yet seen
        self._cancelled: list[Ticket] = []
        self._waiting: collections.deque[_Seq] = collections.deque()          # requests without a slot yet
        self._ids = itertools.count()
        self._step_no = 0
        self._stats = SchedulerStats(n_slots=len(self._slots))
        self._callback_error: BaseException | None = None
        self._model = engine.model_large  # token texts and end-of-generation flags (cached per id)
        for ctx in engine.contexts:  # the scheduler's slots own every sequence from here on
            ctx.remove_from(0, seq_id=-1)
        engine.n_past = 0

    # ---- any thread -------------------------------------------------------------------------

    def submit(self, requests: Sequence[SeqRequest], on_event: Callable[[TokenEvent], None]) -> Ticket:
        """Queue a group. Requests with the same prompt share its prefill. Raises QueueFullError when
        max_queue groups already wait, PromptTooLongError/UsageError for a request that cannot run."""
        for request in requests:
            self._check(request)
        with self._lock:
            if self.max_queue and self._groups_waiting() >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests already wait for a slot; try again later")
            ticket = Ticket(next(self._ids), len(requests))
            seqs = [_Seq(ticket, i, r, on_event, TextSteps(self._model, stop=r.stop, max_tokens=r.max_tokens,
                                                           n_ctx=self.engine.n_ctx, ignore_eos=r.ignore_eos))
                    for i, r in enumerate(requests)]
            if not seqs:
                ticket.done.set()
            else:
                self._incoming.append(seqs)
                self._wake.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """End the group's sequences at the next step ("cancelled"), freeing their slots."""
        with self._lock:
            if not ticket.cancelled and not ticket.done.is_set():
                ticket.cancelled = True
                self._cancelled.append(ticket)
                self._wake.notify_all()

    @property
    def stats(self) -> SchedulerStats:
        with self._lock:
            s = SchedulerStats(**{k: getattr(self._stats, k) for k in self._stats.__dataclass_fields__})
            s.queue_len = len(self._waiting) + sum(len(g) for g in self._incoming)
        s.slots_busy = sum(slot.busy for slot in self._slots)
        return s

    def _groups_waiting(self) -> int:
        return len(self._incoming) + len({seq.ticket.id for seq in self._waiting})

    def _check(self, request: SeqRequest) -> None:
        if not request.prompt:
            raise PromptTooLongError("the prompt is empty after tokenization")
        if len(request.prompt) >= self.engine.n_ctx:
            raise PromptTooLongError(f"the prompt has {len(request.prompt)} tokens but each sequence's context "
                                     f"holds {self.engine.n_ctx}; use a larger -c/--ctx-size or a shorter prompt")
        if request.max_tokens < 1:
            raise UsageError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if request.alpha is not None:
            check_alpha(request.alpha)
        if request.n_logprobs is not None and request.n_logprobs < 0:
            raise UsageError(f"the number of logprobs must be >= 0, got {request.n_logprobs}")
        n_vocab = self.engine.n_vocab
        if any(not 0 <= t < n_vocab for t in request.prompt):
            raise UsageError(f"prompt token ids must be in [0, {n_vocab}); got one outside")

    # ---- the decode thread ------------------------------------------------------------------

    def run_until_idle(self) -> None:
        while self.step():
            pass

    def serve(self, stop: threading.Event) -> None:
        """Step until `stop` is set, sleeping while there is nothing to do. Errors of one step end
        its sequences (step does that); an exception from a callback is printed, not raised."""
        import sys
        import traceback

        while not stop.is_set():
            try:
                busy = self.step()
            except Exception:  # noqa: BLE001  (a callback's bug must not end the server)
                traceback.print_exc(file=sys.stderr)
                busy = True
            if not busy:
                with self._lock:
                    if not self._incoming and not self._cancelled and not stop.is_set():
                        self._wake.wait(timeout=0.05)

    def step(self) -> bool:
        """Admit, decode one batch in every context, sample, emit events. False when idle."""
        self._callback_error = None
        if self._incoming or self._cancelled:  # a racy peek is fine: what it misses, the next step sees
            self._take_incoming()
        queued = bool(self._waiting)
        if queued:
            self._admit()
        batch, rows, prefilled, n_busy = self._build_batch()
        if not batch[0]:
            self._raise_callback_error()
            return False
        self._step_no += 1
        st = self._stats
        st.steps += 1
        st.total_slot_steps += len(self._slots)
        st.busy_slot_steps += n_busy
        if queued:
            st.queued_steps += 1
            st.queued_busy_slot_steps += n_busy
        try:
            self.engine.decode_entries(*batch)
        except RastError as e:
            self._fail_all("context" if isinstance(e, PromptTooLongError) else "error")
            self._raise_callback_error()
            return True
        except Exception:
            self._fail_all("error")  # the slots' caches already hold this batch's tokens
            raise
        for slot, chunk in prefilled:
            slot.cache.extend(chunk)
        try:
            self._sample(rows)
        except Exception:
            self._fail_all("error")  # no sequence may go on from a step it was not sampled in
            raise
        self._raise_callback_error()
        return True

    def _take_incoming(self) -> None:
        with self._lock:
            groups, self._incoming = list(self._incoming), collections.deque()
            cancelled, self._cancelled = self._cancelled, []
        for seqs in groups:
            self._waiting.extend(seqs)
        if cancelled:
            for seq in [s for s in self._waiting if s.ticket.cancelled]:
                self._waiting.remove(seq)
                self._finish(seq, -1, "", "cancelled", None, None, False)
            for slot in self._slots:
                if slot.seq is not None and slot.seq.ticket.cancelled:
                    seq = slot.seq
                    self._release(slot)
                    self._finish(seq, -1, "", "cancelled", None, None, False)

    def _release(self, slot: _Slot) -> None:
        """The slot's sequence is over; a prefill others wait for goes on without it."""
        slot.seq = None
        slot.next_token = None
        if slot.leader is not None:
            leader = slot.leader
            leader.followers.remove(slot)
            if leader.seq is None and not leader.followers:
                leader.todo = []  # nobody waits for that prefill any more
            slot.leader = None
            slot.cache = []
            for ctx in self.engine.contexts:
                ctx.remove_from(0, seq_id=slot.seq_id)
        elif not slot.followers:
            slot.todo = []

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self._slots if not s.busy]
            if not free:
                return
            seq = self._waiting.popleft()
            prompt = seq.request.prompt
            self._stats.prompt_tokens_requested += len(prompt)
            seq.handle = self.sampler.open(seq.request)
            # a prefill of the same prompt under way: wait for its KV
            leader = next((s for s in self._slots if s.todo and s.cache + s.todo == list(prompt)), None)
            if leader is not None:  # its cache is overwritten: take the least useful slot
                slot = min(free, key=lambda s: (len(s.cache), s.last_used))
            else:
                slot = max(free, key=lambda s: (common_prefix(s.cache, prompt), -s.last_used))
            slot.seq, seq.slot, slot.last_used = seq, slot, self._step_no
            if leader is not None:
                slot.leader = leader
                leader.followers.append(slot)
                slot.cache = []
                continue
            keep = min(common_prefix(slot.cache, prompt), len(prompt) - 1)
            donor = max((s for s in self._slots if s is not slot and s.leader is None), default=None,
                        key=lambda s: common_prefix(s.cache, prompt))
            if donor is not None:
                donor_keep = min(common_prefix(donor.cache, prompt), len(prompt) - 1)
                if donor_keep >= keep + MIN_COPY_GAIN:
                    for ctx in self.engine.contexts:
                        ctx.copy_sequence(donor.seq_id, slot.seq_id)
                    slot.cache = list(donor.cache)
                    keep = donor_keep
            for ctx in self.engine.contexts:
                ctx.remove_from(keep, seq_id=slot.seq_id)
            del slot.cache[keep:]
            slot.todo = list(prompt[keep:])

    def _build_batch(self):
        """((tokens, positions, seq_ids, logits) of the batch, rows to sample as (batch index, slot),
        (slot, prompt chunk) pairs decoded, slots busy this step). A generating slot's token goes
        into its cache here: the decode either succeeds or forgets every slot's cache."""
        tokens, positions, seq_ids, logits = batch = ([], [], [], [])
        rows, prefilled = [], []
        n_busy = 0
        for slot in self._slots:
            token = slot.next_token
            if token is not None:
                cache = slot.cache
                rows.append((len(tokens), slot))
                tokens.append(token)
                positions.append(len(cache))
                seq_ids.append(slot.seq_id)
                logits.append(True)
                cache.append(token)
                n_busy += 1
            elif slot.seq is not None or slot.todo or slot.followers:
                n_busy += 1
        budget = self.engine.n_batch - len(tokens)
        for slot in sorted((s for s in self._slots if s.todo), key=lambda s: s.last_used):
            if budget <= 0:
                break
            chunk, slot.todo = slot.todo[:budget], slot.todo[budget:]
            n, pos0 = len(chunk), len(slot.cache)
            tokens.extend(chunk)
            positions.extend(range(pos0, pos0 + n))
            seq_ids.extend([slot.seq_id] * n)
            logits.extend([False] * n)
            if not slot.todo:  # the prompt's last token: its logits start every sequence that shares it
                logits[-1] = True
                rows.append((len(tokens) - 1, slot))
            prefilled.append((slot, chunk))
            self._stats.prompt_tokens_decoded += n
            budget -= n
        return batch, rows, prefilled, n_busy

    def _sample(self, rows: list[tuple[int, _Slot]]) -> None:
        todo: list[tuple[int, _Slot]] = []
        for row, slot in rows:
            if slot.followers:  # the shared prompt is in: its KV goes to every slot waiting for it
                for follower in slot.followers:
                    for ctx in self.engine.contexts:
                        ctx.copy_sequence(slot.seq_id, follower.seq_id)
                    follower.cache = list(slot.cache)
                    follower.leader = None
                    todo.append((row, follower))
                slot.followers = []
            if slot.seq is not None:
                todo.append((row, slot))
        if not todo:
            return
        tokens, changed, logprobs, tops = self.sampler.sample_rows([row for row, _ in todo],
                                                                   [slot.seq.handle for _, slot in todo])
        st = self._stats
        st.tokens_generated += len(todo)
        st.changed_tokens += sum(changed)
        for (_, slot), token, was_changed, lp, top in zip(todo, tokens, changed, logprobs, tops):
            seq = slot.seq
            text, finish = seq.steps.push(token, len(slot.cache))
            if finish:
                self._release(slot)
                self._finish(seq, token, text, finish, lp, top, was_changed)
            else:
                slot.next_token = token
                self._emit(seq, TokenEvent(seq.index, token, text, lp, top, None, was_changed))

    def _fail_all(self, reason: str) -> None:
        """A batch failed: end every sequence that had a slot and forget those slots' KV."""
        for slot in self._slots:
            seq = slot.seq
            slot.seq, slot.next_token, slot.todo, slot.followers, slot.leader = None, None, [], [], None
            slot.cache = []
            for ctx in self.engine.contexts:
                ctx.remove_from(0, seq_id=slot.seq_id)
            if seq is not None:
                self._finish(seq, -1, "", reason, None, None, False)

    def _finish(self, seq: _Seq, token: int, text: str, reason: str, logprob, top, changed: bool) -> None:
        if seq.handle is not None:
            self.sampler.close(seq.handle)
            seq.handle = None
        seq.slot = None
        self._emit(seq, TokenEvent(seq.index, token, text, logprob, top, reason, changed))
        seq.ticket.n_finished += 1
        if seq.ticket.n_finished == seq.ticket.n:
            seq.ticket.done.set()

    def _emit(self, seq: _Seq, event: TokenEvent) -> None:
        if seq.ticket.callback_failed:
            return
        try:
            seq.on_event(event)
        except Exception as e:  # noqa: BLE001  (end this group, keep the others; raised after the step)
            seq.ticket.callback_failed = True
            if self._callback_error is None:
                self._callback_error = e
            if not seq.ticket.cancelled:
                seq.ticket.cancelled = True
                with self._lock:
                    self._cancelled.append(seq.ticket)

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error
