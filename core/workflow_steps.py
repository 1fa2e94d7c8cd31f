"""What a workflow awaits: its steps (a call, a receive, a timer) and groups of them.

Making one reserves its slot in the journal (see ``replay``); awaiting one yields it to
the workflow's driver, which answers it from the journal or suspends the run.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from enum import Enum
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2

from ..proto.dispatch.sdk.v1 import call_pb2
from ..proto.dispatchlet.scheduler.v1 import options_pb2
from ..proto.dispatchlet.workflow.v1 import journal_pb2
from .call_options import set_call_options
from .dispatch_options import NO_SETTINGS, CallSettings
from .messages import RECEIVE_FUNCTION

if TYPE_CHECKING:
    from .functions import Function
    from .replay import Replay


class Mode(Enum):
    """When a group of steps is done."""

    ALL = "gather"
    ANY = "any"
    RACE = "race"


class DurableAwaitable:
    """What a workflow awaits: steps, and the rule that decides when they are done.

    Its outcome comes from the journal, so it is the same on every replay; anything
    else a workflow awaits is not remembered (see ``NotDurable``).
    """

    steps: tuple[Step, ...]
    mode: Mode = Mode.ALL
    single = True

    def __await__(self) -> Generator[DurableAwaitable, Any, Any]:
        return (yield self)


class Step(DurableAwaitable):
    """One step of a workflow, in its slot: a call or a timer."""

    def __init__(self, replay: Replay, slot: int, record: journal_pb2.Step) -> None:
        self.replay = replay
        self.slot = slot
        self.record = record
        self.steps = (self,)


class Call(Step):
    """A call of a function, run by the scheduler when the workflow first awaits it (or
    inside the workflow's run, when ``inline`` says so: see ``inline_steps``)."""

    def __init__(
        self,
        replay: Replay,
        slot: int,
        record: journal_pb2.Step,
        encode: Callable[[], any_pb2.Any],
        settings: CallSettings = NO_SETTINGS,
        inline: Function[..., Any] | None = None,
    ) -> None:
        super().__init__(replay, slot, record)
        self._encode = encode
        self.settings = settings
        """The child call's options (``Function.options``, the function's defaults)."""
        self.inline = inline
        """The function, when this call may run inline: registered with ``inline=True``
        on the workflow's own endpoint, called without per-call options."""
        self.handover: call_pb2.Call | None = None
        """The call to start in its place: the tail call its inline run returned."""

    def input(self) -> any_pb2.Any:
        """The call's input, encoded."""
        return self._encode()

    def call(self) -> call_pb2.Call:
        if self.handover is not None:
            handed = call_pb2.Call()
            handed.CopyFrom(self.handover)
            handed.correlation_id = self.slot + 1
            return handed
        record = self.record
        call = call_pb2.Call(
            correlation_id=self.slot + 1,
            function=record.name,
            endpoint=record.endpoint,
            input=self._encode(),
        )
        return self.settings.apply(call) if self.settings else call

    def __repr__(self) -> str:
        return f"<dispatchlet call of {self.record.name} in slot {self.slot}>"


class Receive(Call):
    """A ``receive(topic)``: a call that no endpoint runs, which the scheduler ends with
    a message sent to the workflow on the topic, or with a timeout error (``messages``)."""

    def __init__(
        self, replay: Replay, slot: int, record: journal_pb2.Step, timeout: float | None
    ) -> None:
        super().__init__(replay, slot, record, any_pb2.Any)
        self.timeout = timeout

    def call(self) -> call_pb2.Call:
        call = call_pb2.Call(correlation_id=self.slot + 1, function=RECEIVE_FUNCTION)
        if self.timeout is not None:
            call.expiration.FromNanoseconds(max(1, int(self.timeout * 1e9)))
        set_call_options(call, options_pb2.CallOptions(receive_topic=self.record.name))
        return call

    def __repr__(self) -> str:
        return f"<dispatchlet receive({self.record.name!r}) in slot {self.slot}>"


class Sleep(Step):
    def __repr__(self) -> str:
        return f"<dispatchlet sleep in slot {self.slot}>"


class Group(DurableAwaitable):
    """Steps awaited together (``gather``, ``any``, ``race``), done by ``mode``."""

    single = False

    def __init__(self, steps: tuple[Step, ...], mode: Mode) -> None:
        self.steps = steps
        self.mode = mode
