#!/bin/bash
# Workers started over ssh on a list of hosts, each running the same
# binary (copied there first), joining a pool started here. See
# docs/cluster.md.
#
#   examples/cluster/ssh.sh host1 host2 host3
set -euo pipefail

APP=${APP:-./target/release/my-app}
PORT=${PORT:-7000}
POOL_HOST=${POOL_HOST:-$(hostname -f)}
MP_POOL_AUTHKEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MP_POOL_AUTHKEY

"$APP" serve --listen "0.0.0.0:$PORT" &
POOL=$!

for host in "$@"; do
    scp -q "$APP" "$host:/tmp/my-app"
    # The key goes on stdin, not the command line (other users see that).
    ssh "$host" 'read -r MP_POOL_AUTHKEY; export MP_POOL_AUTHKEY; exec /tmp/my-app work --pool '"$POOL_HOST:$PORT" \
        <<<"$MP_POOL_AUTHKEY" &
done

wait "$POOL"
