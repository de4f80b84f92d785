"""Write the requirement files that install medrega-gateway's runtime packages at the locked versions.

``pyproject.toml`` names the runtime dependencies (ranges) and the build backend; requirements.txt
is the exact lock of everything (tests included). This writes, into the folder given:

- ``runtime.txt``: the runtime dependencies and the build requirements, as pyproject.toml says;
- ``constraints.txt``: requirements.txt as pip constraints (pip refuses extras there, so
  ``psycopg[binary]==3.3.9`` becomes ``psycopg==3.3.9``).

``pip install -r runtime.txt -c constraints.txt`` then installs exactly the locked versions of the
packages the gateway needs and no test tool. Used by scripts/make-wheelhouse.sh on the host and by
deploy/install-packages.sh inside the image build (standard library only, Python >= 3.11).

    python3 deploy/runtime_requirements.py PYPROJECT REQUIREMENTS OUT_DIR
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def main(pyproject: Path, requirements: Path, out: Path) -> None:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    runtime = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    lines = [line.strip() for line in requirements.read_text(encoding="utf-8").splitlines()]
    constraints = [re.sub(r"\[[^\]]*\]", "", line) for line in lines if line and not line.startswith("#")]
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime.txt").write_text("\n".join(runtime) + "\n", encoding="utf-8")
    (out / "constraints.txt").write_text("\n".join(constraints) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
