#!/usr/bin/env bash
# Install the host packages needed to build/test the workspace on Debian:
#   - protoc (protobuf-compiler) + the well-known .proto files (libprotobuf-dev)
#   - what scripts/images.sh needs: apt-get, dpkg-deb (dpkg), ldd (libc-bin),
#     flock (util-linux), the Debian archive keyring, curl (for test probes).
# Docker itself is not installed here; only checked.
# Idempotent: only installs what is missing; `apt-get update` only if needed.
set -euo pipefail

log() { echo "[install-deps] $*" >&2; }

SUDO=""
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || { log "need root (or sudo) to install packages"; exit 1; }
    SUDO="sudo"
fi

pkgs=()
command -v protoc >/dev/null || pkgs+=(protobuf-compiler)
[[ -e /usr/include/google/protobuf/timestamp.proto ]] || pkgs+=(libprotobuf-dev)
command -v dpkg-deb >/dev/null || pkgs+=(dpkg)
command -v ldd >/dev/null || pkgs+=(libc-bin)
command -v flock >/dev/null || pkgs+=(util-linux)
command -v curl >/dev/null || pkgs+=(curl)
[[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] || pkgs+=(debian-archive-keyring)
command -v ansible-playbook >/dev/null || pkgs+=(ansible-core)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
command -v ssh-keygen >/dev/null || pkgs+=(openssh-client)

if ((${#pkgs[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    inst=($SUDO apt-get -o APT::Sandbox::User=root -y -q install --no-install-recommends "${pkgs[@]}")
    log "installing: ${pkgs[*]}"
    # Try with the existing package lists first; refresh them only if that fails
    # (lists empty/stale in a fresh container).
    if ! "${inst[@]}" >/dev/null 2>&1; then
        log "apt-get update"
        $SUDO apt-get -o APT::Sandbox::User=root -q update >/dev/null
        "${inst[@]}" >/dev/null
    fi
fi

# promtool (checks the management endpoint's /metrics) from Debian's prometheus package,
# extracted rather than installed: installing the package would start a Prometheus server.
if ! command -v promtool >/dev/null; then
    log "promtool: extracting it from Debian's prometheus package"
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get -o APT::Sandbox::User=root -q download prometheus >/dev/null 2>&1); then
        $SUDO apt-get -o APT::Sandbox::User=root -q update >/dev/null
        (cd "$tmp" && apt-get -o APT::Sandbox::User=root -q download prometheus >/dev/null)
    fi
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    $SUDO install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
fi
command -v promtool >/dev/null && log "$(promtool --version 2>&1 | head -n1)"

command -v protoc >/dev/null && log "$(protoc --version)"
if ! command -v docker >/dev/null; then
    log "WARNING: docker CLI not found (needed by scripts/images.sh and the integration tests)"
elif ! docker info >/dev/null 2>&1; then
    log "WARNING: docker daemon not reachable"
fi
log "ok"
