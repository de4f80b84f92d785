"""Write docs/configuration.md from common/settings.py (run after changing a setting)."""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from common.settings import Settings

HEADER = """# Configuration reference

The gateway reads one TOML file (`--config PATH`, or `MEDREGA_CONFIG`). Every key can be overridden
by an environment variable `MEDREGA_<SECTION>__<KEY>` (for example `MEDREGA_NODE__PORT=11113`);
the lists `destinations`, `callers` and `routes` can be given as JSON in `MEDREGA_DESTINATIONS`,
`MEDREGA_CALLERS`, `MEDREGA_ROUTES`. Settings are validated once at start-up: a wrong or unknown key
stops the command with exit status 2 and one line naming the key, e.g.
`configuration error: node.port: Input should be less than or equal to 65535`.
Problems the file cannot show are one line too: a `storage.data_dir` that cannot be created or
written stops every command with exit status 5 (`storage.data_dir: PATH: Permission denied`), a
database that cannot be reached with exit status 4 (`database.url: cannot connect to the database:
...`), a database whose schema is behind with exit status 3.

Destinations, callers and routes in the file only *seed* the database: rows that already exist
(by name / AE title) are kept as an administrator changed them with the CLI or the API, and changes
take effect without a restart.

Generated from `common/settings.py` by `scripts/config_docs.py` (a test keeps them equal).
"""


def render() -> str:
    out = [HEADER]
    for name, field in Settings.model_fields.items():
        model = field.annotation
        is_list = getattr(model, "model_fields", None) is None
        if is_list:
            model = typing.get_args(model)[0]
        out.append(f"## `[[{name}]]` (list)\n" if is_list else f"## `[{name}]`\n")
        out.append("| key | default | environment variable | description |")
        out.append("|---|---|---|---|")
        for key, f in model.model_fields.items():
            default = "(required)" if f.is_required() else f"`{f.default!r}`"
            env = f"MEDREGA_{name.upper()} (JSON list)" if is_list else f"MEDREGA_{name.upper()}__{key.upper()}"
            out.append(f"| `{key}` | {default} | `{env}` | {f.description or ''} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    target.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {target}\n")
