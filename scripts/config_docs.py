"""Write docs/configuration.md from common/settings.py (run after changing a setting)."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from common.holds import FAIL_AT_ENV, HOLD_AT_ENV, HOLD_DIR_ENV
from common.settings import (
    CJK_FONT_ENV,
    CONFIG_ENV,
    DEPLOYMENT_ENV,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    OTHER_VARIABLES,
    TEST_ENV_PREFIX,
    Settings,
)

HEADER = """# Configuration reference

The gateway reads one TOML file (`--config PATH`, or `MEDREGA_CONFIG`). Every key can be overridden
by an environment variable `MEDREGA_<SECTION>__<KEY>` (for example `MEDREGA_NODE__PORT=11113`);
the lists `destinations`, `callers` and `routes` can be given as JSON in `MEDREGA_DESTINATIONS`,
`MEDREGA_CALLERS`, `MEDREGA_ROUTES`. The environment wins over the file, the file over the
defaults. Settings are validated once at start-up: a wrong or unknown key stops the command with
exit status 2 and one line naming the key, e.g.
`configuration error: node.port: Input should be less than or equal to 65535`; so does a `MEDREGA_`
environment variable that is neither a setting nor one of the [other variables](#other-environment-variables)
(`configuration error: MEDREGA_NODE_PORT: unknown environment variable; did you mean MEDREGA_NODE__PORT?`).
Problems the file cannot show are one line too: a `storage.data_dir` that cannot be created or
written stops every command with exit status 5 (`storage.data_dir: PATH: Permission denied`), a
database that cannot be reached with exit status 4 (`database.url: cannot connect to the database:
...`), a database whose schema is behind with exit status 3.

Destinations, callers and routes in the file only *seed* the database: rows that already exist
(by name / AE title) are kept as an administrator changed them with the CLI or the API, and changes
take effect without a restart.

Generated from `common/settings.py` by `scripts/config_docs.py` (a test keeps them equal).
"""


#: What each variable of common.settings.OTHER_VARIABLES is for.
OTHER = {
    CONFIG_ENV: "The configuration file when `--config` is not given.",
    CJK_FONT_ENV: "A font file (.ttf/.ttc) for Chinese text in rendered pictures, instead of the lookup.",
    HOLD_AT_ENV: "Fault tests only: the hold point at which the process stops (common/holds.py).",
    HOLD_DIR_ENV: "Fault tests only: the folder where a held process writes `<point>.held`.",
    FAIL_AT_ENV: "Fault tests only: the hold point at which a stage fails once.",
    **{name: "Read on the host by docker compose or scripts/make-base-images.sh, not by the gateway."
       for name in DEPLOYMENT_ENV},
}


def _other_variables() -> list[str]:
    assert set(OTHER) == OTHER_VARIABLES, "describe every variable of OTHER_VARIABLES here"
    out = ["## Other environment variables\n",
           f"Besides the settings, the gateway accepts these `{ENV_PREFIX}` variables, and any that starts "
           f"with `{TEST_ENV_PREFIX}` (the tests' own).\n",
           "| variable | meaning |", "|---|---|"]
    out.extend(f"| `{name}` | {OTHER[name]} |" for name in sorted(OTHER))
    out.append("")
    return out


def render() -> str:
    out = [HEADER]
    for name, field in Settings.model_fields.items():
        model: typing.Any = field.annotation
        is_list = getattr(model, "model_fields", None) is None
        if is_list:
            model = typing.get_args(model)[0]
        out.append(f"## `[[{name}]]` (list)\n" if is_list else f"## `[{name}]`\n")
        out.append("| key | default | environment variable | description |")
        out.append("|---|---|---|---|")
        for key, f in model.model_fields.items():
            default = "(required)" if f.is_required() else f"`{f.default!r}`"
            env = (f"{ENV_PREFIX}{name.upper()} (JSON list)" if is_list
                   else f"{ENV_PREFIX}{name.upper()}{ENV_NESTED_DELIMITER}{key.upper()}")
            out.append(f"| `{key}` | {default} | `{env}` | {f.description or ''} |")
        out.append("")
    out.extend(_other_variables())
    return "\n".join(out)


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    target.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
