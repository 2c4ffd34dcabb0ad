"""The one way vlserve declares a command-line option: every option also reads
VLSERVE_<NAME> from the environment and says so in --help."""

from __future__ import annotations

import click


def option(*decls, **kw):
    name = decls[0].lstrip("-").replace("-", "_").upper()
    return click.option(*decls, envvar=f"VLSERVE_{name}", show_envvar=True,
                        show_default=True, **kw)
