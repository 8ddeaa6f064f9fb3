#!/usr/bin/env bash
# Start the local PostgreSQL and MariaDB servers the tests use, if they are not running.
set -uo pipefail
wait_for() {  # wait_for NAME COMMAND...
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "start-databases: $name did not come up" >&2
    return 1
}
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "start-databases: starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
    fi
    wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432 || exit 1
fi
if ! mysqladmin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
    echo "start-databases: starting MariaDB"
    if command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    fi
    wait_for MariaDB mysqladmin -h 127.0.0.1 -P 3306 -u root ping || exit 1
fi
