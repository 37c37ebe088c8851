"""A handler module that fails at import, for the config error tests."""

raise RuntimeError("this module cannot be imported on purpose")
