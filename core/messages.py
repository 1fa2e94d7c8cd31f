"""Messages to a running workflow: what the workflow's ``receive`` and the scheduler's
``CallService.Send`` agree on.

A workflow's ``receive(topic, timeout)`` is a step of its journal (``KIND_RECEIVE``)
that its Poll sends as a call like any other, marked with ``CallOptions.receive_topic``
and with the timeout as its expiration. The scheduler stores it as a child of the
workflow's call that no endpoint runs: ``Send`` ends the oldest one waiting on the
topic with the message as its output, or keeps the message in the call's mailbox for
the next receive on the topic, which takes it as it is stored; a receive whose
expiration passes ends TIMEOUT with the error type ``RECEIVE_TIMEOUT``, which the
workflow raises as a ``TimeoutError``.

Why a child call rather than a mailbox the endpoint reads: the Poll already does the
waiting, the waking (``min_results``), the delivery of each result once, in order of
arrival, and the cancellation of what a finished workflow left; a receive is one more
outcome among them, so that ``gather``, ``any``, ``race`` and ``sleep`` compose with
it and a replay decides as the first run did. A message is the child's result, stored
in the scheduler's transaction, so that it is received exactly once.

A message to a call that is not done is accepted even if the call never receives (the
scheduler cannot know whether a function will Poll, nor for which topics): it is kept
while the call is, and deleted with its call tree by the retention. A message to a done
or unknown call is refused, so that its sender learns no workflow will read it.
"""

from __future__ import annotations

RECEIVE_FUNCTION = "dispatchlet.receive"
"""The function name of a receive's call (no endpoint ever runs it)."""

RECEIVE_TIMEOUT = "TimeoutError"
"""The error type of a receive that ended with no message (its timeout passed)."""

MAX_TOPIC_LENGTH = 256
"""The longest topic, in characters."""


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot name messages, or None."""
    if not topic:
        return "an empty topic"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"a topic longer than {MAX_TOPIC_LENGTH} characters"
    if not topic.isprintable():
        # NUL above all: PostgreSQL's text cannot hold it.
        return f"a topic with a control character: {topic!r}"
    return None
