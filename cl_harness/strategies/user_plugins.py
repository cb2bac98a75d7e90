"""Checks on a user's ``package.module:Name`` plugin at validation time, so that it cannot fail after task 1."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import clip, short_repr

EXIT_HINT = "a plugin reports a problem by raising an exception; it must not end the process (sys.exit, os._exit)"


def process_exit(exc: BaseException) -> str:
    """What ended the process from a user's code (``sys.exit(2)``, or the exception's type), with the module and line it came from."""
    what = f"sys.exit({short_repr(exc.code, 40)})" if isinstance(exc, SystemExit) else type(exc).__name__
    traceback = exc.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return what
    frame = traceback.tb_frame
    return f"{what} in module {clip(str(frame.f_globals.get('__name__')), 80)!r} ({clip(frame.f_code.co_filename, 160)}:{traceback.tb_lineno})"


def check_user_plugin(plugin: Any, name: str, params: dict, source: Source, path: KeyPath) -> None:
    """``plugin`` must be an Avalanche plugin class that takes ``params``, and its instances must pickle.

    Checkpoints and worker processes pickle the strategy's plugins, so an unpicklable one would
    train its first task and then fail.
    """
    from avalanche.core import BasePlugin

    if not (inspect.isclass(plugin) and issubclass(plugin, BasePlugin)):
        kind = "a class" if inspect.isclass(plugin) else type(plugin).__name__
        raise source.error(
            path,
            f"user plugin {clip(name, 120)!r} names {kind} that is not an Avalanche plugin",
            hint="name a subclass of avalanche.core.SupervisedPlugin, as package.module:ClassName",
        )
    try:
        inspect.signature(plugin).bind(**params)
    except TypeError as exc:
        raise source.error(path + (name,), f"user plugin {clip(name, 120)!r} does not take these parameters: {clip(exc, 160)}") from None
    except ValueError:  # no signature to inspect: instantiating below tells
        pass
    try:
        instance = plugin(**params)
    except Exception as exc:  # noqa: BLE001 - the user's constructor may raise anything
        raise source.error(path, f"user plugin {clip(name, 120)!r} cannot be built: {type(exc).__name__}: {clip(exc, 160)}") from None
    except BaseException as exc:  # sys.exit() or another exit that is not Ctrl-C
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise source.error(path, f"user plugin {clip(name, 120)!r} ended the process while it was built: {process_exit(exc)}",
                           hint=EXIT_HINT) from None
    try:
        pickle.dumps(instance)
    except BaseException as exc:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError... (a __reduce__ may exit)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise source.error(
            path,
            f"user plugin {clip(name, 120)!r} cannot be pickled ({type(exc).__name__}: {clip(exc, 120)}); "
            "checkpoints and worker processes pickle every plugin",
            hint="keep only picklable state on the plugin (no open files, locks, lambdas or local classes)",
        ) from None
