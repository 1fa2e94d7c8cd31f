"""Registered functions and the rule that turns one input value into arguments.

The rule, which any caller in any language can follow:

- a function with one parameter receives the decoded input value itself;
- a function with several parameters (or ``*args``/``**kwargs``) takes either an
  object of named parameters or a list of positional ones;
- a function with no parameters takes no input (or null);
- a parameter annotated ``RunContext`` is not part of the input: it receives the
  run's context.

Inputs are checked against parameter annotations (see ``typecheck``); a mismatch is
an ``InvalidArgument`` naming the parameter, reported as INVALID_ARGUMENT.
"""

from __future__ import annotations

import datetime
import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import cached_property, update_wrapper
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, TypeVar, overload

from ..proto.dispatch.sdk.v1 import call_pb2
from .context import RunContext
from .current_workflow import current_replay
from .dispatch_options import NO_SETTINGS, Backoff, CallSettings, Seconds, settings
from .dispatching import default_dispatcher
from .errors import InvalidArgument
from .typecheck import Check, checker, describe

if TYPE_CHECKING:
    from .endpoint import Endpoint

P = ParamSpec("P")
R = TypeVar("R")
Q = ParamSpec("Q")
T = TypeVar("T")

FUNCTION_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_<>.]*")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class TailCall:
    """Returned by a function to hand its work over to another function.

    The run ends and the scheduler calls ``function`` (on ``endpoint``, or on this
    endpoint when empty) with ``input``; its result becomes the result of this call.
    ``settings`` are the policy and limits the call is held to from then on
    (``Function.tail_call`` gives the function's defaults, with its options if any).
    """

    function: str
    input: object = None
    endpoint: str = ""
    settings: CallSettings = NO_SETTINGS

    def __post_init__(self) -> None:
        if not FUNCTION_NAME.fullmatch(self.function):
            raise ValueError(f"invalid function name {self.function!r}")


class _Shape(NamedTuple):
    """What a function's parameters mean for its input, resolved once."""

    inputs: tuple[inspect.Parameter, ...]
    checks: dict[str, Check]
    context: str | None
    single: inspect.Parameter | None
    signature: inspect.Signature
    """The signature without the ``RunContext`` parameter: what an input binds to."""
    positions: dict[str, int] | None
    """Each parameter's position when all are plain (positional or keyword, no
    ``*args``, ``**kwargs``, positional-only or keyword-only): then arguments are
    checked without ``Signature.bind``, which costs a workflow a few microseconds per
    step on every replay. None otherwise."""
    required: tuple[int, ...]
    """With ``positions``: the positions of the parameters without a default."""


class Function(Generic[P, R]):
    """A function registered on an endpoint; calling it calls the original."""

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        endpoint: Endpoint | None = None,
        *,
        defaults: CallSettings = NO_SETTINGS,
        schedule: str | None = None,
        inline: bool = False,
        checkpoint_after: float | None = None,
    ) -> None:
        if not FUNCTION_NAME.fullmatch(name):
            raise ValueError(
                f"invalid function name {name!r}: must match ^[a-zA-Z_][a-zA-Z0-9_<>.]*$"
            )
        self.fn = fn
        self.name = name
        self.endpoint = endpoint
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.defaults = defaults
        """The settings of this function's calls (``@endpoint.function(...)``), made from
        Python and by workflows, under those of ``options``."""
        self.schedule = schedule
        """The cron expression this function is declared to run on, or None (pushed by
        ``dispatchlet schedules sync``, which checks it)."""
        self.inline = inline
        """Whether a workflow of its endpoint runs its calls inside its own run, the
        outcome recorded in its journal (``inline_steps``), rather than as child calls."""
        self.checkpoint_after = checkpoint_after
        """For a workflow: seconds of inline steps after which its run checkpoints; None:
        the endpoint's ``checkpoint_after``."""
        update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        replay = current_replay()
        if replay is not None:
            # In a workflow: a durable call, run by the scheduler once awaited.
            return typing.cast(R, replay.call(self, args, kwargs))
        return self.fn(*args, **kwargs)

    @overload
    def step(
        self: Function[Q, Coroutine[Any, Any, T]], *args: Q.args, **kwargs: Q.kwargs
    ) -> Awaitable[T]: ...

    @overload
    def step(self: Function[Q, T], *args: Q.args, **kwargs: Q.kwargs) -> Awaitable[T]: ...

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """In a workflow, the durable call of this function with these arguments: what
        calling it there makes, typed for ``await`` (the awaited value is the function's
        result, for a plain function as for a coroutine)."""
        replay = current_replay()
        if replay is None:
            raise RuntimeError(
                f"{self.name}.step() is a durable call: make it in an async function "
                "registered on an Endpoint, run by the scheduler"
            )
        return replay.call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<dispatchlet function {self.name}>"

    @cached_property
    def _shape(self) -> _Shape:
        # Resolved on first use, not at registration: annotations may name types
        # defined after the decorated function.
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:
            hints = {}
        context = None
        inputs = []
        for param in self.signature.parameters.values():
            if hints.get(param.name) is RunContext:
                context = param.name
            else:
                inputs.append(param)
        checks = {p.name: checker(hints[p.name]) for p in inputs if p.name in hints}
        single = inputs[0] if len(inputs) == 1 and inputs[0].kind not in _VARIADIC else None
        plain = all(p.kind is _POSITIONAL[1] for p in inputs)
        return _Shape(
            tuple(inputs),
            checks,
            context,
            single,
            self.signature.replace(parameters=inputs),
            {p.name: i for i, p in enumerate(inputs)} if plain else None,
            tuple(i for i, p in enumerate(inputs) if p.default is inspect.Parameter.empty),
        )

    def arguments(
        self, value: object, present: bool, context: Callable[[], RunContext]
    ) -> tuple[tuple[object, ...], dict[str, object]]:
        """Positional and keyword arguments for a call with input ``value``.

        ``present`` is False when the request carried no input at all; ``context`` is
        called only when the function asks for its run context.
        """
        shape = self._shape
        args: tuple[object, ...] = ()
        kwargs: dict[str, object] = {}
        if shape.single is not None:
            param = shape.single
            if present:
                self._check(param.name, value)
                if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                    args = (value,)
                else:
                    kwargs[param.name] = value
            elif param.default is inspect.Parameter.empty:
                raise InvalidArgument(f"{self.name}(): missing input for parameter {param.name!r}")
        elif not shape.inputs:
            if present and value not in (None, {}, []):
                raise InvalidArgument(f"{self.name}() takes no input, got {describe(value)}")
        elif present and value is not None:
            if isinstance(value, dict):
                kwargs = dict(value)
            elif isinstance(value, (list, tuple)):
                args = tuple(value)
            else:
                raise InvalidArgument(
                    f"{self.name}() takes parameters "
                    f"({', '.join(p.name for p in shape.inputs)}): pass an object of "
                    f"named parameters or a list of positional ones, got {describe(value)}"
                )
            self._check_bound(args, kwargs)
        if shape.context is not None:
            kwargs[shape.context] = context()
        return args, kwargs

    def _check(self, name: str, value: object) -> None:
        check = self._shape.checks.get(name)
        if check is None:
            return
        expected = check(value)
        if expected is not None:
            raise InvalidArgument(
                f"{self.name}(): parameter {name!r} expects {expected}, got {describe(value)}"
            )

    def _check_bound(self, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        shape = self._shape
        if shape.context is not None and shape.context in kwargs:
            raise InvalidArgument(f"{self.name}(): unexpected parameter {shape.context!r}")
        try:
            bound = shape.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArgument(f"{self.name}(): {exc}") from None
        for param in shape.inputs:
            if param.name not in bound.arguments:
                continue
            value = bound.arguments[param.name]
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                for item in typing.cast(tuple[object, ...], value):
                    self._check(param.name, item)
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                for item in typing.cast(dict[str, object], value).values():
                    self._check(param.name, item)
            else:
                self._check(param.name, value)

    def tail_call(self, *args: P.args, **kwargs: P.kwargs) -> TailCall:
        """A ``TailCall`` of this function with these arguments, encoded by the input
        rule, with the function's defaults (its policy and limits), as a dispatch of it
        would have."""
        return TailCall(self.name, self.input_for(*args, **kwargs), settings=self.defaults)

    def build_call(self, *args: P.args, **kwargs: P.kwargs) -> call_pb2.Call:
        """The ``Call`` of this function with these arguments, on its endpoint's public URL
        (``endpoint_url``, ``DISPATCH_ENDPOINT_URL``), with the function's defaults."""
        return self._build(self.defaults, args, kwargs)

    def _build(
        self, settings: CallSettings, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> call_pb2.Call:
        endpoint = self.endpoint
        url = endpoint.endpoint_url if endpoint is not None else None
        if not url:
            raise ValueError(
                f"{self.name}: its endpoint has no public URL to be called at: set "
                "DISPATCH_ENDPOINT_URL or Endpoint(endpoint_url=...)"
            )
        from . import values  # here: only code that starts calls needs the encoder

        call = call_pb2.Call(function=self.name, endpoint=url)
        value = self.input_for(*args, **kwargs)
        allow_pickle = endpoint is not None and endpoint.allow_pickle
        call.input.CopyFrom(values.to_any(value, allow_pickle=allow_pickle))
        return settings.apply(call) if settings else call

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Start a call of this function with these arguments, run by the scheduler in
        the background; its dispatch id."""
        call = self.build_call(*args, **kwargs)
        dispatcher = self.endpoint.dispatcher() if self.endpoint is not None else None
        (dispatch_id,) = (dispatcher or default_dispatcher()).dispatch([call])
        return dispatch_id

    def options(
        self,
        *,
        key: str | None = None,
        delay: Seconds | None = None,
        at: datetime.datetime | None = None,
        max_attempts: int | None = None,
        timeout: Seconds | None = None,
        backoff: Backoff | Seconds | None = None,
        expiration: Seconds | None = None,
        concurrency_key: str | None = None,
    ) -> CallWithOptions[P, R]:
        """This function's calls with options, over the function's defaults:

        - ``key``: an idempotency key: while the first call dispatched with it is kept,
          dispatching it again creates nothing and gives the first call's dispatch id;
        - ``delay`` (a ``timedelta`` or seconds) or ``at`` (an aware ``datetime``): the
          first attempt starts no earlier (with both, the later);
        - ``max_attempts``, ``timeout`` (per attempt), ``backoff`` (a ``Backoff`` or its
          initial wait): the retry policy;
        - ``expiration``: how long the scheduler may take to run the call, counted from
          when it may start;
        - ``concurrency_key``: the key the function's ``concurrency_per_key`` counts by.

        The object has the function's ``dispatch``, ``build_call`` and ``step``, and in a
        workflow is called like the function. A value that is no option raises a
        ``TypeError`` or ``ValueError`` naming it."""
        given = settings(
            f"{self.name}.options()",
            key=key,
            delay=delay,
            at=at,
            max_attempts=max_attempts,
            timeout=timeout,
            backoff=backoff,
            expiration=expiration,
            concurrency_key=concurrency_key,
        )
        return CallWithOptions(self, given)

    def input_for(self, *args: Any, **kwargs: Any) -> object:
        """The input value that makes this function receive these arguments; a
        ``TypeError`` naming the parameter when they do not bind to its signature, as
        calling it would raise, so that a call that could never run is not started."""
        shape = self._shape
        if shape.single is not None:
            param = shape.single
            if len(args) + len(kwargs) != 1 or (
                kwargs and (param.name not in kwargs or param.kind is _POSITIONAL[0])
            ):
                self._check_binding(args, kwargs)  # names the parameter when one is wrong
                raise TypeError(f"{self.name}() takes one argument: {param.name!r}")
            return args[0] if args else kwargs[param.name]
        if not shape.inputs:
            if args or kwargs:
                raise TypeError(f"{self.name}() takes no arguments")
            return None
        self._check_binding(args, kwargs)
        if not kwargs:
            return list(args)
        if not args:
            return dict(kwargs)
        if shape.positions is not None:
            named = dict(zip(shape.positions, args, strict=False))  # args may be fewer
            named.update(kwargs)
            return named
        if any(p.kind in _VARIADIC or p.kind is _POSITIONAL[0] for p in shape.inputs):
            raise TypeError(
                f"{self.name}(): mix positional and keyword arguments only for named parameters"
            )
        return dict(shape.signature.bind(*args, **kwargs).arguments)

    def _check_binding(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise the ``TypeError`` that ``inspect.Signature.bind`` would, prefixed with
        the function's name, when these arguments do not bind to its parameters."""
        shape = self._shape
        positions = shape.positions
        if positions is None:
            try:
                shape.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.name}(): {exc}") from None
            return
        # Plain parameters: the checks of Signature.bind, in its order and with its
        # messages, at a fraction of its cost.
        given = len(args)
        if kwargs:
            for param in shape.inputs[:given]:
                if param.name in kwargs:
                    raise TypeError(f"{self.name}(): multiple values for argument {param.name!r}")
        if given > len(positions):
            raise TypeError(f"{self.name}(): too many positional arguments")
        if given < len(positions):
            for position in shape.required:
                name = shape.inputs[position].name
                if position >= given and name not in kwargs:
                    raise TypeError(f"{self.name}(): missing a required argument: {name!r}")
        for key in kwargs:
            if key not in positions:
                raise TypeError(f"{self.name}(): got an unexpected keyword argument {key!r}")


class CallWithOptions(Generic[P, R]):
    """A registered function's calls with options (``Function.options``): the same
    ``dispatch``, ``build_call`` and ``step``, and in a workflow the same call."""

    def __init__(self, function: Function[P, R], given: CallSettings) -> None:
        self.function = function
        self.given = given
        """The options given, without the function's defaults."""
        self.settings = given.over(function.defaults)
        """What the calls get: the options given, over the function's defaults."""

    @property
    def key(self) -> str | None:
        return self.given.key

    @property
    def expiration(self) -> float | None:
        """Seconds, or None for the function's or the scheduler's default."""
        return self.settings.expiration

    def build_call(self, *args: P.args, **kwargs: P.kwargs) -> call_pb2.Call:
        """The function's ``build_call``, with these options."""
        return self.function._build(self.settings, args, kwargs)

    def tail_call(self, *args: P.args, **kwargs: P.kwargs) -> TailCall:
        """The function's ``tail_call``, held to these options' policy and limits. The
        call handed over keeps its dispatch id and expiration and runs at once: a
        ``key``, ``delay``, ``at`` or ``expiration`` raises a ``ValueError``."""
        ignored = [
            name
            for name in ("key", "delay", "at", "expiration")
            if getattr(self.given, name) is not None
        ]
        if ignored:
            raise ValueError(
                f"{self.function.name}.options({', '.join(ignored)}=...).tail_call(): a tail "
                "call keeps the call's dispatch id and expiration and runs at once; only a "
                "policy and a concurrency_key apply"
            )
        value = self.function.input_for(*args, **kwargs)
        return TailCall(self.function.name, value, settings=self.settings)

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The function's ``dispatch``, with these options: with a ``key``, dispatching
        again gives the first call's dispatch id and starts nothing new."""
        call = self.build_call(*args, **kwargs)
        function = self.function
        dispatcher = function.endpoint.dispatcher() if function.endpoint is not None else None
        (dispatch_id,) = (dispatcher or default_dispatcher()).dispatch([call])
        return dispatch_id

    @overload
    def step(
        self: CallWithOptions[Q, Coroutine[Any, Any, T]], *args: Q.args, **kwargs: Q.kwargs
    ) -> Awaitable[T]: ...

    @overload
    def step(self: CallWithOptions[Q, T], *args: Q.args, **kwargs: Q.kwargs) -> Awaitable[T]: ...

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """In a workflow, the durable call of the function with these options
        (``Function.step``); its child call carries them."""
        replay = current_replay()
        if replay is None:
            raise RuntimeError(
                f"{self.function.name}.options(...).step() is a durable call: make it in an "
                "async function registered on an Endpoint, run by the scheduler"
            )
        return replay.call(self.function, args, kwargs, self.settings)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        replay = current_replay()
        if replay is None:
            raise TypeError(
                f"{self.function.name}.options(...) is called only in a workflow (a durable "
                "call); elsewhere its options are for the scheduler: use .dispatch(...) or "
                ".build_call(...)"
            )
        return typing.cast(R, replay.call(self.function, args, kwargs, self.settings))

    def __repr__(self) -> str:
        return f"<dispatchlet function {self.function.name} with options>"
