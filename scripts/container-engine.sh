#!/usr/bin/env bash
# A container engine for building and testing the image (docker/Dockerfile), where none runs:
#   scripts/container-engine.sh start    install docker.io, debootstrap and docker-compose if
#                                        missing, start dockerd if no engine answers
#   scripts/container-engine.sh stop     stop the dockerd this script started (no other)
#   scripts/container-engine.sh status   exit 0 if an engine answers
# CI runs as root on Debian; a laptop with Docker Desktop or a system dockerd just uses that.
# The dockerd started here uses the vfs storage driver and no bridge/iptables (works inside an
# unprivileged CI container); containers then use --network host.
set -euo pipefail
STATE=${LABELER_ENGINE_STATE:-/tmp/labeler-dockerd}
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log

answers() { docker info >/dev/null 2>&1; }

# The tools the container test needs beside the engine: debootstrap (the local base image,
# where no registry answers) and a compose parser (Debian has no `docker compose` plugin; its
# docker-compose reads the same file).
missing_tools() {
    command -v debootstrap >/dev/null || echo debootstrap
    docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null \
        || echo docker-compose
}

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "container-engine: $* missing and cannot be installed here (needs root and apt-get)" >&2
        return 1
    fi
    echo "container-engine: installing $*" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

start() {
    local want
    if answers; then
        # An engine of the developer's own (Docker Desktop, a system dockerd): add the tools
        # where this can, and leave the engine alone.
        mapfile -t want < <(missing_tools)
        [ ${#want[@]} -eq 0 ] || apt_install "${want[@]}" || true
        return 0
    fi
    mapfile -t want < <(missing_tools)
    command -v dockerd >/dev/null || want+=(docker.io)
    command -v docker >/dev/null || want+=(docker.io)
    [ ${#want[@]} -eq 0 ] || apt_install "${want[@]}"
    if [ "$(id -u)" != 0 ]; then
        echo "container-engine: no engine answers and starting dockerd needs root" >&2
        return 1
    fi
    mkdir -p "$STATE"
    echo "container-engine: starting dockerd (log: $LOG)" >&2
    # setsid: the daemon outlives the shell (and the test) that started it.
    setsid dockerd --storage-driver=vfs --iptables=false --bridge=none \
        --pidfile "$STATE/dockerd.own.pid" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
        if answers; then return 0; fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            echo "container-engine: dockerd exited; last lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2
            return 1
        fi
        sleep 1
    done
    echo "container-engine: dockerd did not answer within 60 s (see $LOG)" >&2
    return 1
}

stop() {
    [ -f "$PIDFILE" ] || { echo "container-engine: no dockerd started by this script" >&2; return 0; }
    local pid; pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$PIDFILE"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) answers ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
