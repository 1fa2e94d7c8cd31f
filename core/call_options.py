"""The options a call carries to dispatchlet's scheduler beside ``dispatch.sdk.v1.Call``
(``dispatchlet.scheduler.v1.CallOptions``), in field ``OPTIONS_FIELD`` of the Call: a
field the Dispatch protocol does not define, which dispatch-py, other schedulers and any
protobuf parser skip, so that a call with options is still a plain Dispatch call."""

from __future__ import annotations

from ..proto.dispatch.sdk.v1 import call_pb2
from ..proto.dispatchlet.scheduler.v1 import options_pb2
from .dispatch_options import MAX_KEY_LENGTH, key_problem

__all__ = ["MAX_KEY_LENGTH", "OPTIONS_FIELD", "call_options", "key_problem", "set_call_options"]

OPTIONS_FIELD = options_pb2.Call.DESCRIPTOR.fields_by_name["dispatchlet_options"].number
"""The Call's field that holds its options (1000)."""


def set_call_options(call: call_pb2.Call, options: options_pb2.CallOptions) -> None:
    """Give ``call`` these options (merged over any it had), as its unknown field
    ``OPTIONS_FIELD``: serialized with it and kept by its copies."""
    call.MergeFromString(options_pb2.Call(dispatchlet_options=options).SerializeToString())


def call_options(call: call_pb2.Call) -> options_pb2.CallOptions:
    """The options ``call`` carries (empty when none)."""
    optioned = options_pb2.Call.FromString(call.SerializeToString())
    return optioned.dispatchlet_options
