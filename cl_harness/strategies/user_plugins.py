"""Checks on a user's ``package.module:Name`` plugin at validation time, so that it cannot fail after task 1."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import clip


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
    try:
        pickle.dumps(instance)
    except Exception as exc:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError...
        raise source.error(
            path,
            f"user plugin {clip(name, 120)!r} cannot be pickled ({type(exc).__name__}: {clip(exc, 120)}); "
            "checkpoints and worker processes pickle every plugin",
            hint="keep only picklable state on the plugin (no open files, locks, lambdas or local classes)",
        ) from None
