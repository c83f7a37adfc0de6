# Sourced by the release recipes: one training stage that is started, resumed after a kill,
# or skipped once finished, so a multi-stage recipe can be run again until it is done.
#   train_stage DIR FLAGS...   (PY: the Python to run h2a with)
train_stage() {
  local dir=$1; shift
  if [ -f "$dir/metadata.json" ]; then
    echo "stage $dir: finished earlier"
  elif [ -f "$dir/config.json" ]; then
    "$PY" -m h2a train --resume "$dir"
  else
    "$PY" -m h2a train --out "$dir" "$@"
  fi
}
