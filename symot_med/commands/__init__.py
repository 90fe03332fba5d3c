"""Subcommands that live outside ``symot_med.cli``.

Each module here defines ``register(subparsers) -> None``, which adds its parser(s) with
``set_defaults(handler=FUNCTION)``; ``FUNCTION(args) -> int`` runs the command. ``symot_med.cli``
imports every module of this package, so a new command needs no edit of the CLI itself.
"""
