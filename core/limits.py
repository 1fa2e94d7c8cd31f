"""Bounds and their defaults: what an Endpoint accepts, what a workflow may grow to, and
the protocol's bounds on a Poll.

Plain constants, in a module of their own so that the endpoint and the workflow replay
both read them without importing each other.
"""

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_HEADER_COUNT = 128
DEFAULT_MAX_HEADER_BYTES = 64 * 1024

DEFAULT_MAX_WORKFLOW_STEPS = 10_000
"""Steps (calls, sleeps, patches) one workflow run may make: each resume replays them all."""
DEFAULT_MAX_JOURNAL_SIZE = 4 * 1024 * 1024
"""Bytes a workflow's journal may hold: it travels in every resume."""

MAX_POLL_CALLS = 1000
"""Calls one Poll may start (the protocol's bound); larger fan-outs take several."""
MAX_POLL_RESULTS = 1000
"""Results one resume may bring (the protocol's bound)."""

DEFAULT_CHECKPOINT_AFTER = 1.0
"""Seconds of inline steps after which a workflow's run checkpoints through the scheduler."""
