#!/usr/bin/env bash
# Serve the Iris classifier for `make serve`: train a model when the store has none, and make a
# development API key when IRIS_API_KEYS is unset. Expects the venv's bin first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

model_tag=${IRIS_MODEL_TAG:-iris_clf:latest}

# Whether the store has the model. BentoML's store keeps a model as models/NAME/VERSION/model.yaml
# and names the newest version in models/NAME/latest: finding it there spares the second that
# asking BentoML (`bentoml models get`) takes, which stays the answer whenever the files disagree.
model_in_store() {
  local name=${model_tag%%:*} version=${model_tag#*:}
  local folder=${BENTOML_HOME:-$HOME/bentoml}/models/$name
  if [[ $version == latest && -r $folder/latest ]]; then
    version=$(<"$folder/latest")
  fi
  [[ -f $folder/$version/model.yaml ]] || bentoml models get "$model_tag" >/dev/null 2>&1
}

if ! model_in_store; then
  if [[ $model_tag != "iris_clf:latest" ]]; then
    echo "IRIS_MODEL_TAG=$model_tag is not in the model store (bentoml models list iris_clf)." >&2
    exit 1
  fi
  echo "No $model_tag in the model store: training one."
  python train.py
fi

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
   For anything but local use, set IRIS_API_KEYS to keys of your own.
  ========================================================================

BANNER
fi

exec bentoml serve service:IrisClassifier --host "${HOST:-127.0.0.1}" --port "${PORT:-3000}"
