"""The command-line contract shared by every console script (README "Shared contract").

- :class:`App` is the scaffold: ``--version``, commands registered by decorator, dispatch.
- :func:`make_parser` builds an ``ArgumentParser`` whose usage errors print one
  ``error:`` line and exit 2.
- :func:`add_train_args`, :func:`add_run_args`, :func:`add_synth_args`, :func:`add_benchmark_args`,
  :func:`add_evaluate_args` add the shared flags.
- :func:`run_main` runs a command: :class:`~medcommon.errors.InputError` becomes
  ``error: <where>: <problem>`` on stderr and exit code 2, any other exception a
  traceback and exit code 1.
"""

from medcommon.cli.app import App, Command
from medcommon.cli.args import (
    add_benchmark_args,
    add_common_args,
    add_config_args,
    add_evaluate_args,
    add_method_arg,
    add_methods_arg,
    add_predict_args,
    add_preset_arg,
    add_run_args,
    add_synth_args,
    add_train_args,
    make_parser,
    subparsers,
)
from medcommon.cli.runner import fail, run_main

__all__ = [
    "App",
    "Command",
    "add_benchmark_args",
    "add_common_args",
    "add_config_args",
    "add_evaluate_args",
    "add_method_arg",
    "add_methods_arg",
    "add_predict_args",
    "add_preset_arg",
    "add_run_args",
    "add_synth_args",
    "add_train_args",
    "fail",
    "make_parser",
    "run_main",
    "subparsers",
]
