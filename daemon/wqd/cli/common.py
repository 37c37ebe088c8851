"""What every `wqd` command shares: its config and its argument types."""

import argparse

from wqd import config as config_module

EXIT_OK = 0


def load_config(args):
    """The config the command names; raise ConfigError."""
    return config_module.load(args.config or config_module.default_path())


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value
