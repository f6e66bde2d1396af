#!/usr/bin/env bash
# Serve the Iris classifier for `make serve`: train a model when the store has none, and make a
# development API key when IRIS_API_KEYS is unset. Expects the venv's bin first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/model_store.sh
ensure_model

if [[ -z "${IRIS_API_KEYS:-}" ]]; then
  key_file=.dev-api-key
  if [[ ! -s $key_file ]]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(24))' >"$key_file")
  fi
  IRIS_API_KEYS=$(<"$key_file")
  export IRIS_API_KEYS
  cat <<BANNER

  ========================================================================
   IRIS_API_KEYS is not set: serving with a development key (in $key_file)
     $IRIS_API_KEYS
   Send it as:  -H "x-api-key: \$(cat $key_file)"
   Or try the API in a browser at http://${HOST:-127.0.0.1}:${PORT:-3000}/ (Authorize, ApiKey).
   For anything but local use, set IRIS_API_KEYS to keys of your own.
  ========================================================================

BANNER
fi

# A mistake in the configuration or in the model store entry, said in one line before any worker
# starts (`bentoml serve` says BentoML's own in several lines, or a traceback for broken YAML).
python -m iris_bento.config_check --model >/dev/null

# Local use: the docs UI at / answers without a key, for trying the API in a browser (the shipped
# configuration.yaml keeps it behind the key). What BENTOML_CONFIG_OVERRIDES already says wins.
BENTOML_CONFIG_OVERRIDES=$(python - <<'PY'
import json, os

def merged(base: dict, update: dict) -> dict:
    return {**base, **{k: merged(base.get(k, {}), v) if isinstance(v, dict) else v
                       for k, v in update.items()}}

public_docs = {"services": {"IrisClassifier": {"iris": {"docs": {"public": True}}}}}
print(json.dumps(merged(public_docs, json.loads(os.environ.get("BENTOML_CONFIG_OVERRIDES") or "{}"))))
PY
)
export BENTOML_CONFIG_OVERRIDES

exec bentoml serve service:IrisClassifier --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}"
