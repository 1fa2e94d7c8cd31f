"""What the call page lets a viewer do to a call: each action is a CallService handler
of the API, run with its request message, offered only when the API has both (so an
action appears once the server implements its RPC) and only for the calls it applies to.

An action's handler answers with a message; when that message names a dispatch id (a
new call, such as a re-run), the page goes there, else back to the call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...core.status import Status
from ...proto.dispatchlet.scheduler.v1 import calls_pb2
from ..store import Call, State

if TYPE_CHECKING:
    from ..api import Api


@dataclass(frozen=True)
class Action:
    name: str
    """The API's handler (``Api.<name>``), and the last part of the action's URL."""
    label: str
    request: str
    """The name of the handler's request message in ``calls_pb2``."""
    when: Callable[[Call], bool]
    """Whether the action applies to the call as it is."""
    done: str
    """What the page says once the action is done."""
    danger: bool = False
    """Shown as a destructive action."""
    headers: bool = False
    """Whether the handler also takes the request's headers (its ``Idempotency-Key``:
    none from a page)."""

    def available(self, api: Api) -> bool:
        return callable(getattr(api, self.name, None)) and hasattr(calls_pb2, self.request)

    async def run(self, api: Api, dispatch_id: str) -> str | None:
        """Run the action on the call; the dispatch id its answer names, if any."""
        kind = getattr(calls_pb2, self.request)
        handler = getattr(api, self.name)
        request = kind(dispatch_id=dispatch_id)
        answer: Any = await (handler(request, {}) if self.headers else handler(request))
        fields = answer.DESCRIPTOR.fields_by_name if hasattr(answer, "DESCRIPTOR") else {}
        named = getattr(answer, "dispatch_id", "") if "dispatch_id" in fields else ""
        return str(named) or None


ACTIONS = (
    Action(
        "cancel",
        "Cancel",
        "CancelRequest",
        lambda call: not call.done,
        "Cancelled, with its unfinished descendants.",
        danger=True,
    ),
    # A call waiting for its next attempt after a failed one: that attempt now.
    Action(
        "retry",
        "Retry now",
        "RetryRequest",
        lambda call: call.state is State.READY and call.status not in (None, Status.OK.value),
        "Its next attempt starts now.",
    ),
    # A new call with the same function, endpoint and input.
    Action(
        "rerun",
        "Re-run",
        "RerunRequest",
        lambda call: call.done and call.topic is None,  # a receive runs no function
        "Dispatched again.",
        headers=True,
    ),
    # A failed workflow that kept its journal: a new call from its failed step on.
    Action(
        "resume",
        "Resume",
        "ResumeRequest",
        lambda call: call.done and call.status != Status.OK.value and bool(call.poll),
        "Resumed from where it failed.",
        headers=True,
    ),
)


def offered(actions: Sequence[Action], api: Api) -> list[Action]:
    """The actions this API can run."""
    return [action for action in actions if action.available(api)]
