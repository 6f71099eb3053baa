"""The one version number: --version, the User-Agent, results files and pyproject.toml."""

VERSION = "0.2.0"
