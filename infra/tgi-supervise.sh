#!/bin/sh
# Entrypoint of the TGI container: runs text-generation-launcher with LORA_ADAPTERS read from the
# adapter list file (one `name=path` per line, written by infra/tgi-refresh.sh on the shared
# volume) and restarts it whenever the list changes; FILE.served records the list the running
# server was started with (the refresh hook waits for it). Arguments go to the launcher.
#   TGI_ADAPTERS_FILE   the list (default /artifacts/tgi/lora_adapters)
#   TGI_LAUNCHER        the server command (default text-generation-launcher)
#   TGI_WATCH_SECONDS   how often the list is checked (default 2)
#   TGI_ADAPTERS_OWNER  user:group given the list's directory (the workers' user, which writes it)
# If the server exits by itself, so does this script (the container's restart policy takes over).
set -u
file=${TGI_ADAPTERS_FILE:-/artifacts/tgi/lora_adapters}
launcher=${TGI_LAUNCHER:-text-generation-launcher}
interval=${TGI_WATCH_SECONDS:-2}
pid=""

adapters() { if [ -s "$file" ]; then paste -sd, "$file"; fi; }

launch() {
  current=$(adapters)
  if [ -n "$current" ]; then export LORA_ADAPTERS="$current"; else unset LORA_ADAPTERS; fi
  echo "tgi-supervise: starting $launcher with LORA_ADAPTERS=${current:-<none>}"
  # shellcheck disable=SC2086  # the launcher may be a command with arguments
  $launcher "$@" &
  pid=$!
  printf '%s' "$current" > "$file.served.tmp" && mv "$file.served.tmp" "$file.served"
}

stop() {
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

trap 'stop; exit 0' TERM INT
mkdir -p "$(dirname "$file")"
if [ -n "${TGI_ADAPTERS_OWNER:-}" ]; then chown "$TGI_ADAPTERS_OWNER" "$(dirname "$file")"; fi
launch "$@"
while :; do
  sleep "$interval"
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    code=$?
    echo "tgi-supervise: server exited with $code"
    exit "$code"
  fi
  if [ "$(adapters)" != "$current" ]; then
    echo "tgi-supervise: adapter list changed; restarting"
    stop
    launch "$@"
  fi
done
