#!/usr/bin/env bash
# Installs Debian's nginx for the proxy-overhead bench (benches/proxy.rs runs it itself on
# 127.0.0.1 with a private config; nothing is enabled system-wide).
set -euo pipefail
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq nginx-light >/dev/null 2>&1 || $SUDO apt-get install -y -qq nginx >/dev/null
