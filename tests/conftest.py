"""Shared by every test folder: wide rich output, so a CLI's usage-error box never wraps a message
the tests look for."""

import os

os.environ["COLUMNS"] = "300"
