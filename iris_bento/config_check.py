"""`make check-config`: check a configuration file as `bentoml serve` would, BentoML's settings
and the project's, without serving: an operator can check a ConfigMap before rolling it out.
One line, exit 0 or 1."""

from __future__ import annotations

import os
import sys

SERVICE = "service:IrisClassifier"


def main() -> int:
    from bentoml.exceptions import BentoMLConfigException

    try:
        # BentoML reads BENTOML_CONFIG as it loads; `inject_config` applies its schema for the
        # service as `bentoml serve` does; then the project's own section.
        import bentoml

        service = bentoml.load(SERVICE)
        service.inject_config()
        from iris_bento.settings import project_settings, worker_count

        settings, workers = project_settings(), worker_count()
    except (BentoMLConfigException, FileNotFoundError) as error:
        print(" ".join(str(error).split()), file=sys.stderr)
        return 1
    print(
        f"{os.environ.get('BENTOML_CONFIG', '(BentoML defaults)')}: valid "
        f"({workers} workers, drain {settings.shutdown.drain_s:g} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
