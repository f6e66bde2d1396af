"""`make serve`'s server: the start-up check of `iris_bento.config_check`, then `bentoml serve`
in the same process, so that the check costs no second start of Python and BentoML; and the
docs UI public, for trying the API in a browser (the shipped configuration.yaml keeps it behind
the key)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from iris_bento.config_check import SERVICE, Mistake, check, file_mistake, one_line

OVERRIDES_ENV = "BENTOML_CONFIG_OVERRIDES"


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` deep-merged over `base`, as BentoML merges its overrides."""
    return {
        **base,
        **{
            key: merged(base.get(key, {}), value) if isinstance(value, dict) else value
            for key, value in update.items()
        },
    }


def with_public_docs(overrides: str) -> str:
    """The overrides with the docs public, unless they say otherwise themselves."""
    from iris_bento.settings import SERVICE_NAME, SETTINGS_KEY

    public = {"services": {SERVICE_NAME: {SETTINGS_KEY: {"docs": {"public": True}}}}}
    return json.dumps(merged(public, json.loads(overrides or "{}")))


def main(argv: list[str]) -> int:
    if mistake := file_mistake():
        print(mistake, file=sys.stderr)
        return 1
    from bentoml.exceptions import BentoMLException

    # Imported once the files are known to load, and before the service, as `bentoml serve`
    # starts: the CLI loads and checks BentoML's own settings as it is imported.
    try:
        from bentoml_cli.cli import cli
    except BentoMLException as error:
        print(one_line(str(error)), file=sys.stderr)
        return 1

    from iris_bento.settings import project_settings

    try:
        print(check(with_model=True), flush=True)
    except Mistake as mistake:
        print(mistake, file=sys.stderr)
        return 1
    os.environ[OVERRIDES_ENV] = with_public_docs(os.environ.get(OVERRIDES_ENV, ""))
    project_settings.cache_clear()  # read again, with the docs public
    return cli(["serve", SERVICE, *argv], prog_name="bentoml")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
