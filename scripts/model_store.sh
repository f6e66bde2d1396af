# Sourced by scripts/serve.sh and scripts/build_image.sh: make sure the model store holds the model
# they serve, training one when it holds none. Expects the venv's bin first on PATH and the
# project's folder as the current directory.

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

# Train and register iris_clf when the store has no model; an explicit other tag must exist.
ensure_model() {
  if model_in_store; then
    return
  fi
  if [[ $model_tag != "iris_clf:latest" ]]; then
    echo "IRIS_MODEL_TAG=$model_tag is not in the model store (bentoml models list iris_clf)." >&2
    exit 1
  fi
  echo "No $model_tag in the model store: training one."
  python train.py
}
