"""Replies of sibling nodes, matched to the workflow steps waiting for them.

An orchestrator sends each remote step as a command whose envelope carries a
correlation id of its own; the sibling answers on its terminal topic with the
same id.  Every instance of the orchestrator reads those topics in a consumer
group of its own, so each sees every reply and keeps only those it waits for:
the others belong to other instances, or come too late.
"""

import asyncio
import json
import threading
from collections import OrderedDict

from pydantic import JsonValue

from .bus import EventBus, in_daemon_thread

Reply = dict[str, JsonValue]


class ReplyRouter:
    """Hands each reply envelope's payload to the step waiting for its id."""

    def __init__(self, topics: list[str], group_id: str, remember: int) -> None:
        """Listen to ``topics`` as ``group_id``; recall ``remember`` sent ids."""
        self.topics = topics
        self.group_id = group_id
        self.matched = 0
        self.late = 0
        self.ignored = 0
        self._remember = remember
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        # Ids sent recently: a reply to one nobody waits for any more is late,
        # any other unmatched reply is some other instance's.
        self._sent: OrderedDict[str, None] = OrderedDict()
        self._ready: threading.Event | None = None

    @property
    def started(self) -> bool:
        """Whether the consumer runs (it starts once the bus connects)."""
        return self._ready is not None

    def start(self, bus: EventBus) -> bool:
        """Start consuming the reply topics on ``bus``; False without a client."""
        if self._ready is None:
            self._ready = bus.start_listener(self.topics, self.group_id, self.receive)
        return self._ready is not None

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait (bounded) until the consumer holds its partitions.

        A reply sent before that would be missed: the consumer starts at the
        end of each topic.  The flag is set by the consumer's thread, so a
        thread waits for it.
        """
        ready = self._ready
        if ready is None or ready.is_set():
            return ready is not None
        return await in_daemon_thread(lambda: ready.wait(timeout_s))

    def expect(self, correlation_id: str) -> asyncio.Future[Reply]:
        """The future the reply to ``correlation_id`` will resolve."""
        future = self._pending.get(correlation_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._pending[correlation_id] = future
        self._sent[correlation_id] = None
        self._sent.move_to_end(correlation_id)
        while len(self._sent) > self._remember:
            self._sent.popitem(last=False)
        return future

    def forget(self, correlation_id: str, future: asyncio.Future[Reply]) -> None:
        """Stop waiting: a reply that comes now counts as late."""
        if self._pending.get(correlation_id) is future:
            del self._pending[correlation_id]
        future.cancel()

    async def receive(self, raw: bytes) -> None:
        """Resolve the step waiting for this reply; count the reply otherwise."""
        try:
            envelope: object = json.loads(raw)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            self.ignored += 1
            return
        correlation_id = str(envelope.get("correlation_id"))
        future = self._pending.get(correlation_id)
        if future is not None and not future.done():
            payload = envelope.get("payload")
            future.set_result(payload if isinstance(payload, dict) else {})
            self.matched += 1
        elif correlation_id in self._sent:
            self.late += 1
        else:
            self.ignored += 1

    def stats(self) -> dict[str, JsonValue]:
        """Consumer state and reply counters, for the health body."""
        ready = self._ready
        state = "stopped" if ready is None else "ready" if ready.is_set() else "joining"
        topics: list[JsonValue] = [*self.topics]
        return {
            "consumer": state,
            "group_id": self.group_id,
            "topics": topics,
            "pending": sum(not f.done() for f in self._pending.values()),
            "matched": self.matched,
            "late": self.late,
            "ignored": self.ignored,
        }
