"""Finding the ``Endpoint`` an APP argument names, as ``dispatchlet serve`` and the
waitress launcher take it, and forgetting the app's modules so that a reload runs its
current code.

APP is ``module``, ``module:attr``, ``path/to/file.py`` or ``path/to/file.py:attr``.
Without ``attr`` the module must hold exactly one ``Endpoint`` among its globals.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ..core.endpoint import Endpoint
from ..core.errors import ConfigurationError, DispatchletError

_ATTR = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


class AppLoadError(DispatchletError):
    """APP does not name a loadable Endpoint. An exception raised by the app's own
    code while it was imported is the ``__cause__``."""


def load_endpoint(app: str) -> Endpoint:
    """Import what ``app`` names and return its ``Endpoint``."""
    target, attr = split_app(app)
    return find_endpoint(load_module(target), attr, label=target)


def load_module(target: str) -> ModuleType:
    """Import the module or the ``.py`` file ``target`` names, as the command line loads
    apps: it gives the endpoints it loads a key itself (or serves none), so an app that
    builds its adapter as it loads does not warn that it has none."""
    warn, Endpoint.warn_without_key = Endpoint.warn_without_key, False
    try:
        return import_file(target) if _is_path(target) else import_module(target)
    finally:
        Endpoint.warn_without_key = warn


def split_app(app: str) -> tuple[str, str | None]:
    """``app`` as (module or file, attribute or None)."""
    if not app:
        raise AppLoadError("empty APP: give a module, module:attr or path/to/file.py")
    head, colon, tail = app.rpartition(":")
    if colon and head and not tail:
        raise AppLoadError(f"{app!r}: missing attribute name after ':'")
    if colon and head and _ATTR.fullmatch(tail):
        return head, tail
    # No attribute; this also keeps a Windows drive letter ("C:\\app.py") in the path.
    return app, None


def _is_path(target: str) -> bool:
    separators = {"/", os.sep, os.altsep or "/"}
    return target.endswith(".py") or any(s in target for s in separators)


def import_file(target: str) -> ModuleType:
    """Import the Python file ``target``; its directory is put on ``sys.path`` so
    that the app imports its neighbours as when run as a script."""
    path = Path(target).expanduser()
    if path.is_dir():
        raise AppLoadError(f"{target} is a directory: give a .py file or a module name")
    if not path.is_file():
        raise AppLoadError(f"no such file: {target}")
    path = path.resolve()
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and _module_file(existing) == path:
        return existing
    if existing is not None or not name.isidentifier():
        # Never shadow a module already loaded under that name (a file named json.py).
        name = _unused_module_name()
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {target}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses and pickle look it up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # an app that exits as it loads did not load
        del sys.modules[name]
        raise _failed(target, exc)  # noqa: B904 - its cause is set
    return module


def import_module(name: str) -> ModuleType:
    """Import the module ``name``, looking in the current directory first."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise AppLoadError(
            f"{name!r} is neither a module name nor a .py file "
            "(APP is module, module:attr, path/to/file.py or path/to/file.py:attr)"
        )
    # As `python -m` does; a console script's sys.path starts with its own directory.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise AppLoadError(
                f"no module named {name!r} (looked in the current directory and sys.path)"
            ) from None
        raise _failed(name, exc)  # noqa: B904 - its cause is set
    except (Exception, SystemExit) as exc:  # an app that exits as it loads did not load
        raise _failed(name, exc)  # noqa: B904 - its cause is set


def find_endpoint(module: ModuleType, attr: str | None, *, label: str) -> Endpoint:
    """The ``Endpoint`` at ``attr`` in ``module``, or its single module-level one."""
    if attr is not None:
        value: object = module
        for part in attr.split("."):
            try:
                value = getattr(value, part)
            except AttributeError:
                raise AppLoadError(f"{label} has no attribute {attr!r}") from None
        if not isinstance(value, Endpoint):
            raise AppLoadError(
                f"{label}:{attr} is of type {type(value).__name__}, not a dispatchlet Endpoint"
            )
        return value
    names: dict[int, list[str]] = {}
    endpoints: dict[int, Endpoint] = {}
    for name, value in vars(module).items():
        if isinstance(value, Endpoint):
            names.setdefault(id(value), []).append(name)
            endpoints[id(value)] = value
    if not endpoints:
        raise AppLoadError(
            f"no Endpoint found in {label}: define one at module level, "
            "e.g. `endpoint = Endpoint()`, or name it with APP:attr"
        )
    if len(endpoints) > 1:
        found = ", ".join(group[0] for group in names.values())
        first = next(iter(names.values()))[0]
        raise AppLoadError(
            f"several Endpoints in {label} ({found}): choose one with {label}:{first}"
        )
    return next(iter(endpoints.values()))


def app_root(app: str) -> Path:
    """The folder that holds APP's own code: a file's folder, a package's folder (its
    top-level package), or a single module's folder. Call it once APP is loaded."""
    target, _ = split_app(app)
    if _is_path(target):
        return Path(target).expanduser().resolve().parent
    top = sys.modules.get(target.split(".")[0])
    file = _module_file(top) if top is not None else None
    if file is None:
        return Path.cwd()
    return file.parent


def app_files(app: str) -> set[Path]:
    """The source files of APP's own code loaded now: the modules under ``app_root``
    (the app and what it imported from beside it), not those of installed packages."""
    target, _ = split_app(app)
    files = set(_own_modules(app_root(app)).values())
    if _is_path(target):
        files.add(Path(target).expanduser().resolve())
    return files


def forget_app(app: str) -> None:
    """Drop APP's own modules from ``sys.modules``, so that loading APP again runs its
    current code (and that of the modules beside it that it imports)."""
    for name in _own_modules(app_root(app)):
        del sys.modules[name]
    importlib.invalidate_caches()  # new files beside the app are found


def _own_modules(root: Path) -> dict[str, Path]:
    """The loaded modules whose source is under ``root``, by name."""
    # A virtualenv inside the project holds installed packages, not the app's code, and
    # dispatchlet itself is never reloaded (its classes must stay the ones in use).
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    own = {}
    for name, module in list(sys.modules.items()):
        if name == "dispatchlet" or name.startswith("dispatchlet."):
            continue
        file = _module_file(module)
        if (
            file is not None
            and file.is_relative_to(root)
            and not any(file.is_relative_to(prefix) for prefix in prefixes)
        ):
            own[name] = file
    return own


def _failed(target: str, exc: BaseException) -> AppLoadError:
    """The error for an app whose code raised ``exc`` while it was imported.

    Its cause is ``exc`` with a traceback of the app's own frames only (none of the
    import machinery; none at all for a SyntaxError, which shows its own line). A
    ``ConfigurationError`` (an invalid DISPATCH_VERIFICATION_KEY, say) names the setting
    and has no cause: no traceback would say more.
    """
    if isinstance(exc, ConfigurationError):
        error = AppLoadError(f"{target}: {exc}")
        error.__suppress_context__ = True
        return error
    tb = exc.__traceback__
    while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    exc.__traceback__ = tb
    error = AppLoadError(f"importing {target} failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def user_traceback(error: AppLoadError) -> str | None:
    """The traceback of the app's code that made ``error``, if its code raised."""
    cause = error.__cause__
    if cause is None:
        return None
    return "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))


def _is_machinery(filename: str) -> bool:
    return (
        filename == __file__
        or filename.startswith("<frozen importlib")
        or Path(filename).parent.name == "importlib"
    )


def _unused_module_name() -> str:
    number = 1
    while f"__dispatchlet_app_{number}__" in sys.modules:
        number += 1
    return f"__dispatchlet_app_{number}__"


def _module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None
