#!/usr/bin/env bash
# System packages the test suite uses: bubblewrap (sandbox), podman + runc (a Docker-API engine for
# the docker sandbox backend), chromium (renders the eval HTML report). Debian/Ubuntu, root or sudo.
set -euo pipefail
pkgs=(bubblewrap podman runc chromium)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then echo "system-deps: all present (${pkgs[*]})"; exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
