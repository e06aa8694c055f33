#!/bin/sh
# cairn: which image booted, for scripts and cairn-booted: /run/cairn/image.env
# (CAIRN_PROFILE, CAIRN_VERSION), read from the signed kernel command line
# (cairn.image=PROFILE/VERSION). The image does not carry its own name: the
# same inputs make the same bytes, whatever version name a build gets.
set -f
export LC_ALL=C
# (Other paths only for cairn's tests.)
cmdline="${CAIRN_TEST_CMDLINE:-/proc/cmdline}"
run="${CAIRN_TEST_RUN:-/run/cairn}"
# After `cairn reboot --soft` (systemd's soft-reboot: the kernel, and its
# command line, stay those of the image it booted), the command line of the
# image switched to, which cairn wrote into this root's own RAM overlay: a
# regular file, never a link, of this script's user (root), written by
# nobody else. Any other file there names no image (unknown), never the
# kernel's.
soft="${CAIRN_TEST_SOFT_CMDLINE:-/etc/cairn/cmdline}"
if [ -e "$soft" ] || [ -L "$soft" ]; then
    if [ -f "$soft" ] && [ ! -L "$soft" ] && [ "$(stat -c %u "$soft")" = "$(id -u)" ] &&
        [ -z "$(find "$soft" -prune -perm /022)" ]; then
        cmdline="$soft"
    else
        cmdline=/dev/null
    fi
fi
# `image-env --cmdline`: which command line this userspace runs by (for
# cairn-booted).
if [ "${1:-}" = --cmdline ]; then
    echo "$cmdline"
    exit 0
fi
image=""
seen=0
for p in $(cat "$cmdline"); do
    case "$p" in
        cairn.image=*) image="${p#cairn.image=}"; seen=$((seen + 1)) ;;
    esac
done
# Exactly one (the initramfs refuses a repeated one too).
[ "$seen" -eq 1 ] || image=""
profile="${image%%/*}"
version="${image#*/}"
# Names as cairn makes them, nothing a shell reading the file would run.
name() { printf '%s\n' "$1" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9._+-]*'; }
if [ "$profile/$version" != "$image" ] || ! name "$profile" || ! name "$version"; then
    profile=unknown
    version=unknown
fi
mkdir -p "$run"
printf 'CAIRN_PROFILE=%s\nCAIRN_VERSION=%s\n' "$profile" "$version" > "$run/image.env.new"
mv "$run/image.env.new" "$run/image.env"
