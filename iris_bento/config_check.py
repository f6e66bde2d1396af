"""`make check-config`: check a configuration file as `bentoml serve` would, BentoML's settings
and the project's, without serving: an operator can check a ConfigMap before rolling it out.
With `--model`, also the model store entry the service would load, as `make serve` runs it
first. One line, exit 0 or 1."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

import yaml

SERVICE = "service:IrisClassifier"

# BentoML's schema errors (the `schema` library): one line per nested key, then the reasons.
_KEY = re.compile(r"^Key '([^']*)' error:$")
# Reasons that hide the value in a validator's repr: "v(-3) should evaluate to True",
# "Or(<function ...>, ...) did not validate -1".
_REFUSED_VALUE = re.compile(r"^\w+\((.*)\) should evaluate to True$|did not validate (.*)$")


def one_line(message: str) -> str:
    """BentoML's multi-line "Invalid configuration file was given" as one line: the setting,
    its value and BentoML's reason."""
    lines = message.splitlines()
    if not lines or not lines[0].startswith("Invalid configuration file was given"):
        return " ".join(message.split())
    keys = [match.group(1) for line in lines[1:] if (match := _KEY.match(line))]
    reasons = [line for line in lines[1:] if not _KEY.match(line)]
    reason = reasons[0] if reasons else "not valid"
    if refused := _REFUSED_VALUE.search(reason):
        reason = f"{refused.group(1) or refused.group(2)} is not allowed"
    return f"invalid configuration: {'.'.join(keys)}: {reason}"


def say_yaml_error(what: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    return f"{what}: not YAML{where}: {problem}"


def file_mistake() -> str | None:
    """What BentoML would meet with a traceback: a configuration file that is missing, not
    text, not YAML or not a mapping, and overrides that are not a JSON object."""
    if path := os.environ.get("BENTOML_CONFIG"):
        try:
            settings = yaml.safe_load(Path(path).read_bytes())
        except OSError as error:
            return f"invalid configuration: {path}: {error.strerror}"
        except yaml.YAMLError as error:
            return say_yaml_error(f"invalid configuration: {path}", error)
        if not isinstance(settings, dict):
            return f"invalid configuration: {path} holds no mapping of settings"
    if overrides := os.environ.get("BENTOML_CONFIG_OVERRIDES"):
        try:
            settings = json.loads(overrides)
        except ValueError as error:
            return f"invalid configuration: BENTOML_CONFIG_OVERRIDES is not JSON: {error}"
        if not isinstance(settings, dict):
            return "invalid configuration: BENTOML_CONFIG_OVERRIDES is not a JSON object"
    return None


class Mistake(Exception):
    """A mistake in the configuration or the model store entry, said in one line."""


def check(with_model: bool) -> str:
    """The configuration's summary, as `bentoml serve` would load it; with `with_model`, also
    the model store entry it would serve. Raises `Mistake`. Call it once `file_mistake()` has
    found nothing: importing BentoML reads the files."""
    from bentoml.exceptions import BentoMLException

    # The check says one line: not BentoML's "Applying user config override" lines, nor its own
    # logged copy of an error the check reports.
    bentoml_logs = logging.getLogger("bentoml")
    level = bentoml_logs.level
    bentoml_logs.setLevel(logging.CRITICAL)
    try:
        try:
            # BentoML reads BENTOML_CONFIG as it loads; `inject_config` applies its schema for
            # the service as `bentoml serve` does; then the project's own section.
            import bentoml

            service = bentoml.load(SERVICE)
            service.inject_config()
            from iris_bento.settings import project_settings, worker_count

            settings, workers = project_settings(), worker_count()
        except BentoMLException as error:
            raise Mistake(one_line(str(error))) from None
        served = ""
        if with_model:
            model = service.inner.model_ref
            try:
                service.inner.refuse_a_model_it_cannot_serve()
            except BentoMLException as error:
                raise Mistake(" ".join(str(error).split())) from None
            except yaml.YAMLError as error:
                raise Mistake(say_yaml_error(f"{model.tag} in the model store", error)) from None
            served = f", model {model.tag}"
    finally:
        bentoml_logs.setLevel(level)
    return (
        f"{os.environ.get('BENTOML_CONFIG', '(BentoML defaults)')}: valid "
        f"({workers} workers, drain {settings.shutdown.drain_s:g} s{served})"
    )


def main(argv: list[str]) -> int:
    if mistake := file_mistake():
        print(mistake, file=sys.stderr)
        return 1
    try:
        print(check(with_model="--model" in argv))
    except Mistake as mistake:
        print(mistake, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
