"""The error a config (or a flag standing for one) raises: kept apart from config.py, whose
pydantic models take most of the CLI's start-up, so that `--version`, `--help` and `show`
and the lifecycle's time limits can name it without building them."""


class ConfigError(Exception):
    """A config the user must fix; the message is the one line we print."""
