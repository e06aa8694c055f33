# Shared by scripts/demo, scripts/test and scripts/bench-mirror: install what
# cairn needs on a Debian 12 machine (as root) and build it.
set -euo pipefail

CAIRN_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages cairn drives or its tests use.
CAIRN_RUNTIME_PKGS=(gpg gpgv apt dpkg ca-certificates mmdebstrap debootstrap xz-utils squashfs-tools cryptsetup-bin
    fdisk dosfstools e2fsprogs sbsigntool openssl util-linux mount
    grub-common grub-pc-bin grub-efi-amd64-bin grub-emu xorriso mtools qemu-system-x86 ovmf)
# Secure Boot behind shim (`--shim`), installed by the test script only:
# shim-signed's postinst re-runs grub-install on a host that boots GRUB
# through UEFI (Debian's installer puts shim there on such hosts anyway); on
# a BIOS host it does nothing.
CAIRN_SHIM_PKGS=(shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed)
CAIRN_BUILD_PKGS=(build-essential pkg-config)

# The host's Debian archive URI (from its apt sources, never written here)
# and release codename.
host_debian_uri() {
    local c
    c=$(. /etc/os-release && echo "$VERSION_CODENAME")
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null \
        | awk -v s="$c" '$2 == s { print $1; exit }'
}

# Installs Debian packages, never removing one: apt's plan is simulated
# first. When it would remove a package that came from <codename>-backports
# (a newer qemu-utils, say), the requested packages built from the same
# source are taken from backports too (same version line, so nothing
# breaks); the backports index is read through a private source list, the
# host's apt configuration is not changed. Any removal left: refused, named.
apt_install() {
    local missing=()
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    if [ -z "${CAIRN_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export CAIRN_APT_UPDATED=1
    fi
    local opts=() bpo=() removed
    removed=$(apt_removals "${missing[@]}")
    if [ -n "$removed" ]; then
        local bpo_src=() rest=() r s src uri code list p
        for r in $removed; do
            [[ "$(dpkg-query -W -f='${Version}' "$r")" == *'~bpo'* ]] || continue
            bpo_src+=("$(dpkg-query -W -f='${source:Package}' "$r")")
        done
        uri=$(host_debian_uri)
        code=$(. /etc/os-release && echo "$VERSION_CODENAME")
        if [ ${#bpo_src[@]} -gt 0 ] && [ -n "$uri" ]; then
            list="$CAIRN_TOP/target/apt/backports.list"
            mkdir -p "$(dirname "$list")"
            { cat /etc/apt/sources.list 2>/dev/null || true
              echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $code-backports main"
            } > "$list"
            opts=(-o "Dir::Etc::SourceList=$list")
            apt-get "${opts[@]}" update -qq
            for p in "${missing[@]}"; do
                src=$(apt-cache "${opts[@]}" show --no-all-versions "$p" 2>/dev/null | awk '/^Source:/ { print $2; exit }')
                [ -n "$src" ] || src=$p
                local moved=""
                for s in "${bpo_src[@]}"; do
                    [ "$s" = "$src" ] && moved=1
                done
                if [ -n "$moved" ]; then bpo+=("$p"); else rest+=("$p"); fi
            done
            if [ ${#bpo[@]} -gt 0 ]; then
                echo "$(echo $removed) came from $code-backports: taking ${bpo[*]} (same source) from there too" >&2
                missing=("${rest[@]}")
                removed="$(apt_removals "${missing[@]}") $(apt_removals -t "$code-backports" "${bpo[@]}")"
            fi
        fi
        if [ -n "${removed// /}" ]; then
            echo "refusing to install ${missing[*]} ${bpo[*]}: apt would remove $(echo $removed) from this host." >&2
            echo "Resolve the conflict by hand (install versions that fit together), then run this again." >&2
            return 1
        fi
    fi
    # Services the packages bring (nginx's, say) are not started on this
    # host: the tests start their own, on 127.0.0.1. Through invoke-rc.d's
    # policy hook, only when the host has none of its own.
    local policy=/usr/sbin/policy-rc.d own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# cairn scripts/lib.sh: no service starts while it installs\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    local rc=0
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2 || rc=$?
    fi
    if [ $rc -eq 0 ] && [ ${#bpo[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install -y -qq --no-install-recommends \
            -t "$code-backports" "${bpo[@]}" >&2 || rc=$?
    fi
    [ -n "$own_policy" ] && rm -f "$policy"
    return $rc
}

# The packages apt would remove to install the arguments (simulated).
apt_removals() {
    local plan
    [ $# -gt 0 ] || return 0
    [ "$1" != -t ] || [ $# -gt 2 ] || return 0
    plan=$(apt-get "${opts[@]}" install -s --no-install-recommends "$@" 2>&1) || {
        echo "$plan" >&2
        echo "apt cannot plan the installation of: $*" >&2
        return 1
    }
    echo "$plan" | awk '/^Remv / { print $2 }'
}

# A Rust toolchain new enough for the workspace (1.89): the one on PATH, or
# Debian 12's rustc-web/cargo-web from the host's own archive.
ensure_rust() {
    if command -v cargo >/dev/null 2>&1; then
        local v
        v=$(cargo --version | awk '{print $2}')
        if [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | awk 'NR == 1')" = 1.89.0 ]; then
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

# Cargo's own progress shows (a bar on a terminal, a line per crate
# otherwise): a first build takes minutes.
cairn_build_release() {
    echo "== building cairn (release)" >&2
    (cd "$CAIRN_TOP" && cargo build --release --locked >&2)
    CAIRN_BIN="$CAIRN_TOP/target/release/cairn"
}

# cairn's Debian package (scripts/package, release), named by CAIRN_PACKAGE:
# what images of `cairn = true` profiles install.
cairn_package_for_images() {
    CAIRN_PACKAGE=$("$CAIRN_TOP/scripts/package" | tail -n 1)
    export CAIRN_PACKAGE
}
