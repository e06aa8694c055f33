# Shared by scripts/demo, scripts/test and scripts/bench-mirror: install what
# cairn needs on a Debian 12 machine (as root) and build it.
set -euo pipefail

CAIRN_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages cairn drives or its tests use.
CAIRN_RUNTIME_PKGS=(gpg gpgv apt dpkg ca-certificates mmdebstrap debootstrap xz-utils squashfs-tools
    fdisk dosfstools e2fsprogs sbsigntool openssl util-linux mount
    grub-common grub-pc-bin grub-efi-amd64-bin grub-emu xorriso mtools qemu-system-x86 ovmf)
# Secure Boot behind shim (`--shim`), installed by the test script only:
# shim-signed's postinst re-runs grub-install on a host that boots GRUB
# through UEFI (Debian's installer puts shim there on such hosts anyway); on
# a BIOS host it does nothing.
CAIRN_SHIM_PKGS=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed)
CAIRN_BUILD_PKGS=(build-essential pkg-config)

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    if [ -z "${CAIRN_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export CAIRN_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# A Rust toolchain new enough for the workspace (1.89): the one on PATH, or
# Debian 12's rustc-web/cargo-web from the host's own archive.
ensure_rust() {
    if command -v cargo >/dev/null 2>&1; then
        local v
        v=$(cargo --version | awk '{print $2}')
        if printf '%s\n1.89.0\n' "$v" | sort -V | head -1 | grep -qx 1.89.0; then
            return 0
        fi
        echo "cargo $v is older than 1.89" >&2
    fi
    if command -v rustup >/dev/null 2>&1; then
        rustup toolchain install stable --profile minimal -c clippy -c rustfmt >&2
        return 0
    fi
    apt_install rustc-web cargo-web rustfmt-web
}

# Arguments: more packages to install.
install_all() {
    apt_install "${CAIRN_RUNTIME_PKGS[@]}" "${CAIRN_BUILD_PKGS[@]}" "$@"
    ensure_rust
}

cairn_build_release() {
    (cd "$CAIRN_TOP" && cargo build --release --locked -q 2>&1 >&2) || (cd "$CAIRN_TOP" && cargo build --release)
    CAIRN_BIN="$CAIRN_TOP/target/release/cairn"
}
