#!/bin/sh
# The TGI policy-refresh hook (AUTODIDACT_TGI_REFRESH_COMMAND, run by generation workers):
#
#     AUTODIDACT_TGI_REFRESH_COMMAND='/app/infra/tgi-refresh.sh {adapter_id} {adapter_path}'
#
# TGI reads LoRA adapters only at start-up (LORA_ADAPTERS=name=path,...). This hook adds
# `adapter_id=adapter_path` to the adapter list file on the shared volume; infra/tgi-supervise.sh,
# the TGI container's entrypoint, sees the file change and restarts TGI with the new list. The
# hook returns once the supervisor has restarted TGI with the adapter (it records the list it
# launched with in FILE.served), so the workers' tgi backend, which then waits for /health, never
# mistakes the old server for the new one. Idempotent: an adapter already in the list changes
# nothing (several workers may ask at once; a lock orders them). Only the newest TGI_MAX_ADAPTERS
# (default 4) are kept, so retired versions stop taking server memory. TGI_REFRESH_WAIT (default
# 300) seconds without the restart is an error.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 ADAPTER_ID ADAPTER_PATH" >&2; exit 2; }
id=$1
path=$2
file=${TGI_ADAPTERS_FILE:-/artifacts/tgi/lora_adapters}
keep=${TGI_MAX_ADAPTERS:-4}
case "$id$path" in *,*|*=*) echo "adapter id and path must not contain ',' or '='" >&2; exit 2;; esac
[ -e "$path" ] || { echo "adapter directory $path does not exist" >&2; exit 1; }
mkdir -p "$(dirname "$file")"
exec 9>"$file.lock"
flock -w 60 9
[ -e "$file" ] || : > "$file"
if ! grep -qxF "$id=$path" "$file"; then
  tmp="$file.tmp.$$"
  { grep -v "^$id=" "$file" || true; echo "$id=$path"; } | tail -n "$keep" > "$tmp"
  mv "$tmp" "$file"  # atomic: the supervisor never reads half a list
fi
exec 9>&-
wait_s=${TGI_REFRESH_WAIT:-300}
i=0
until [ -f "$file.served" ] && tr , '\n' < "$file.served" | grep -qxF "$id=$path"; do
  i=$((i + 1))
  if [ "$i" -gt $((wait_s * 2)) ]; then
    echo "TGI was not restarted with $id within ${wait_s}s: is infra/tgi-supervise.sh the TGI entrypoint," >&2
    echo "and does it read $file?" >&2
    exit 1
  fi
  sleep 0.5
done
echo "TGI restarted with LORA_ADAPTERS=$(cat "$file.served")"
