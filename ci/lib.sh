# SPDX-License-Identifier: GPL-2.0-or-later
# Shared helpers for the ci/ scripts. Source it; do not run it.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOOLS=$TARGET/tools          # Python venv with meson, downloaded .debs
QEMU_DIR=$TARGET/qemu        # QEMU source, build tree and installed binary
GUEST_DIR=$TARGET/guest      # guest kernel and initramfs

# The one QEMU release mekha patches, and the hash of Debian's orig tarball.
QEMU_VERSION=10.0.2
QEMU_TARBALL=qemu_10.0.2+ds.orig.tar.xz
QEMU_TARBALL_SHA256=0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1

log() { printf '\033[1m[%s]\033[0m %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '\033[1;31m[%s] error:\033[0m %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# Run a step only when its inputs changed: `stamp_fresh NAME HASH` is true when
# the stamp NAME already records HASH; `stamp_write NAME HASH` records it.
stamp_fresh() { [ -f "$TARGET/stamps/$1" ] && [ "$(cat "$TARGET/stamps/$1")" = "$2" ]; }
stamp_write() { mkdir -p "$TARGET/stamps"; printf '%s' "$2" >"$TARGET/stamps/$1"; }

# Hash of files and directories (contents and names), for stamps.
hash_paths() {
    (cd "$ROOT" && find "$@" -type f -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (apt-get, network namespaces)"
}

# The mirror this machine's apt uses for bookworm (no mirror host is
# written into this repository).
debian_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || die "no bookworm apt source on this machine (to derive bookworm-backports from)"
    printf '%s\n' "$uri"
}

# A deb822 source of bookworm-backports from mirror URI, of TYPES.
backports_source() {
    cat <<EOF
Types: $2
URIs: $1
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

# `apt-get update`, at most once per script run.
APT_UPDATED=
apt_update_once() {
    [ -n "$APT_UPDATED" ] && return 0
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
}
