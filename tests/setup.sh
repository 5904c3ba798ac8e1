#!/usr/bin/env bash
# Installs what atlanlily's engine and tests need on a Debian/Ubuntu machine that has Rust:
# the PostgreSQL server binaries (the harness starts its own throwaway clusters from them; no
# running server is used). Idempotent; run as root or with sudo available.
set -euo pipefail

have_pg() {
  if [ -n "${LILY_PG_BINDIR:-}" ] && [ -x "${LILY_PG_BINDIR}/initdb" ]; then return 0; fi
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if ! have_pg; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "Installing PostgreSQL from the distribution's packages..."
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi

# When run as root, the harness runs the server as the 'postgres' user the package creates.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "The 'postgres' OS user is missing; reinstall the postgresql package." >&2
  exit 1
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed; install Rust (rustup) first." >&2
  exit 1
fi
echo "Setup complete: PostgreSQL $(ls -d /usr/lib/postgresql/*/ 2>/dev/null | xargs -n1 basename | sort -n | tail -1) binaries available."
