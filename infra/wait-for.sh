#!/bin/sh
# Wait until a TCP port answers: wait-for.sh HOST PORT [SECONDS]
host=$1; port=$2; limit=${3:-60}
i=0
while ! (echo > "/dev/tcp/$host/$port") 2>/dev/null; do
  i=$((i + 1)); [ "$i" -ge "$limit" ] && { echo "timeout waiting for $host:$port"; exit 1; }
  sleep 1
done
