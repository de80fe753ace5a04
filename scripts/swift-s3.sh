#!/usr/bin/env bash
# A real S3 server for the tests and for development: Debian's OpenStack Swift with its s3api
# middleware, one replica, on loopback ports only.
#
#   eval "$(scripts/swift-s3.sh start)"   # installs the packages if missing, starts, prints the env
#   scripts/swift-s3.sh stop
#
# `start` is idempotent: when the proxy already answers it only prints the env again. It
# creates no bucket (the tests create theirs). Everything lives in $SWIFT_S3_DIR
# (default /var/tmp/imgsmaller-swift): rings, configs, the one device, logs and pid files.
# Ports: $SWIFT_S3_PORT (S3 endpoint, default 18080), 16200-16202 (object, container,
# account servers), 11311 (memcached). Needs root (apt-get; the servers drop to user swift).
set -euo pipefail

DIR=${SWIFT_S3_DIR:-/var/tmp/imgsmaller-swift}
PORT=${SWIFT_S3_PORT:-18080}
OBJECT_PORT=16200 CONTAINER_PORT=16201 ACCOUNT_PORT=16202 MEMCACHED_PORT=11311
ENDPOINT="http://127.0.0.1:$PORT"
PACKAGES="swift swift-proxy swift-account swift-container swift-object memcached"
SERVERS="object container account proxy"

say() { echo "swift-s3: $*" >&2; }

print_env() {
    cat <<EOF
export IMGSMALLER_TEST_S3_ENDPOINT_URL=$ENDPOINT
export IMGSMALLER_TEST_S3_BUCKET=imgsmaller-test
export IMGSMALLER_TEST_S3_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test:tester
export AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true
EOF
}

healthy() { curl -fsS -m 2 "$ENDPOINT/healthcheck" >/dev/null 2>&1; }

install_packages() {
    local missing="" package
    for package in $PACKAGES; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    [ -z "$missing" ] && return
    say "installing$missing (about a minute)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

build_ring() {  # name port
    local builder="$DIR/etc/$1.builder"
    [ -f "$DIR/etc/$1.ring.gz" ] && return
    swift-ring-builder "$builder" create 10 1 1 >/dev/null
    swift-ring-builder "$builder" add "r1z1-127.0.0.1:$2/d1" 100 >/dev/null
    swift-ring-builder "$builder" rebalance >/dev/null || true  # exits 1 on a warning about one device
}

write_configs() {
    mkdir -p "$DIR/etc" "$DIR/srv/d1" "$DIR/cache" "$DIR/run" "$DIR/log"
    chown -R swift:swift "$DIR/srv" "$DIR/cache"
    cat >"$DIR/etc/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = imgsmaller-test
swift_hash_path_prefix = imgsmaller-test
[storage-policy:0]
name = Policy-0
default = yes
EOF
    local server port
    for server in object container account; do
        case $server in
            object) port=$OBJECT_PORT ;; container) port=$CONTAINER_PORT ;; account) port=$ACCOUNT_PORT ;;
        esac
        cat >"$DIR/etc/$server-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = 0
user = swift
swift_dir = $DIR/etc
devices = $DIR/srv
mount_check = false
recon_cache_path = $DIR/cache
log_name = $server-server

[pipeline:main]
pipeline = $server-server

[app:$server-server]
use = egg:swift#$server

[$server-replicator]
[$server-auditor]
[$server-updater]
EOF
    done
    cat >"$DIR/etc/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PORT
workers = 0
user = swift
swift_dir = $DIR/etc
log_name = proxy-server

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
    build_ring object $OBJECT_PORT
    build_ring container $CONTAINER_PORT
    build_ring account $ACCOUNT_PORT
}

running() { [ -f "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

start_daemon() {  # name command...
    local name=$1
    shift
    running "$name" && return
    setsid nohup "$@" >>"$DIR/log/$name.log" 2>&1 </dev/null &
    echo $! >"$DIR/run/$name.pid"
}

start() {
    if healthy; then
        say "already running on $ENDPOINT"
        print_env
        return
    fi
    local started=$SECONDS
    install_packages
    write_configs
    start_daemon memcached memcached -u memcache -l 127.0.0.1 -p $MEMCACHED_PORT -U 0
    local server
    for server in $SERVERS; do
        start_daemon "$server" "swift-$server-server" "$DIR/etc/$server-server.conf"
    done
    local tries=0
    until healthy; do
        tries=$((tries + 1))
        if [ $tries -gt 120 ]; then
            say "the proxy did not answer $ENDPOINT/healthcheck within 60 s; logs in $DIR/log"
            tail -n 20 "$DIR"/log/*.log >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    say "running on $ENDPOINT after $((SECONDS - started)) s"
    print_env
}

stop() {
    local name pid pids=""
    for name in proxy account container object memcached; do
        [ -f "$DIR/run/$name.pid" ] || continue
        pid=$(cat "$DIR/run/$name.pid")
        # Each daemon leads its own process group (setsid): signal the group, forked workers included.
        kill -0 "$pid" 2>/dev/null && kill -TERM -- "-$pid" 2>/dev/null && pids="$pids $pid"
        rm -f "$DIR/run/$name.pid"
    done
    for _ in $(seq 30); do  # test data only: 3 s to exit, then SIGKILL
        local alive=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
        pids=$alive
        [ -z "$pids" ] && break
        sleep 0.1
    done
    for pid in $pids; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
