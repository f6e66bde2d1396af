#!/usr/bin/env bash
# Serve the Iris classifier for `make serve`: train a model when the store has none, and make a
# development API key when neither IRIS_API_KEYS nor IRIS_API_KEYS_FILE is set. Expects the venv's
# bin first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/model_store.sh
ensure_model

if [[ -z "${IRIS_API_KEYS:-}" && -z "${IRIS_API_KEYS_FILE:-}" ]]; then
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

# The start-up check (a mistake in the configuration or the model store entry, said in one line
# before any worker starts), then `bentoml serve`, in one process; the docs UI public.
exec python -m iris_bento.local_serve --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}"
