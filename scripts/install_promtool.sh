#!/usr/bin/env bash
# promtool, for the alert-rule tests (`make test`): from Debian's `prometheus` package, installed
# when missing. Prints the path of promtool; exits 1 with one line when it cannot be had.
set -euo pipefail

if command -v promtool >/dev/null; then
    command -v promtool
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "promtool missing: install Debian's prometheus package (apt-get install prometheus) or run as root" >&2
    exit 1
fi
echo "[install-promtool] installing Debian's prometheus package (for promtool)" >&2
apt-get update -qq
# The package's post-install would start a Prometheus server where an init system runs; a
# policy-rc.d (when there is none already) keeps it stopped: only promtool is wanted.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool
