#!/usr/bin/env bash
# Make sure MariaDB server, bootstrap and client binaries exist for devtools.mariadb_server.
# Exit 0 if they are (or could be made) available, 1 with a one-line hint otherwise.
set -euo pipefail

have() {
    local name
    for name in "$@"; do
        if command -v "$name" >/dev/null 2>&1 || [ -x "/usr/sbin/$name" ]; then
            return 0
        fi
    done
    return 1
}

have_binaries() {
    have mariadbd mysqld && have mariadb-install-db mysql_install_db && have mariadb mysql
}

if have_binaries; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    # The tests run their own private server, so keep the package from starting the
    # system-wide service: invoke-rc.d asks policy-rc.d, and exit 101 means "not allowed".
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
    apt-get update
    apt-get install -y mariadb-server mariadb-client
    if have_binaries; then
        exit 0
    fi
fi

echo "MariaDB not found: install mariadb-server and mariadb-client (as root: devtools/ensure_mariadb.sh), or set TEST_MYSQL_HOST to an existing server" >&2
exit 1
