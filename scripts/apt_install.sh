#!/usr/bin/env bash
# Install the Debian packages named as arguments that are not installed yet: the project's own
# set-up for the test tiers that need system packages (podman, chromium). Needs root when anything
# is missing; waits for another apt run to release its lock rather than failing.
set -euo pipefail

missing=()
for package in "$@"; do
  dpkg-query --show --showformat='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed ||
    missing+=("$package")
done
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]}, as root)" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian" >&2
apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null
