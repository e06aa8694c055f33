#!/bin/sh
# cairn: runs once the system is up (after multi-user.target).
# 1. Marks the boot good for cairn's GRUB boot counting: the menu entry that
#    booted us (cairn.entry= on the command line) becomes cairn_good in the
#    GRUB environment block of the boot disk, and a trial of this entry ends
#    (as does a refusal of it, cairn_bad, that the initramfs recorded).
# 2. Says which image is running (console, second serial port, kernel log).
# 3. Powers off when a test asks for it (cairn.poweroff on the command line,
#    or DMI serial cairn-test-poweroff).
. /etc/cairn/image.env

entry=""
uuid=""
for p in $(cat /proc/cmdline); do
    case "$p" in
        cairn.entry=*) entry="${p#cairn.entry=}" ;;
        cairn.boot=*) uuid="${p#cairn.boot=}" ;;
    esac
done

# Rewrites the 1024-byte environment block in place (same blocks, as GRUB's
# save_env expects): cairn_good=$entry, cairn_trial cleared when it is $entry.
mark_good() {
    env="$1/boot/grub/grubenv"
    [ -f "$env" ] || return 0
    [ -L "$env" ] && { echo "cairn: $env is a symlink: not written" >&2; return 1; }
    [ "$(wc -c < "$env")" -eq 1024 ] || { echo "cairn: $env is not a 1024-byte GRUB environment block" >&2; return 1; }
    trial="$(sed -n 's/^cairn_trial=//p' "$env")"
    bad="$(sed -n 's/^cairn_bad=//p' "$env")"
    tmp="$(mktemp)"
    {
        echo "# GRUB Environment Block"
        grep -v '^#' "$env" | grep -v '^cairn_good=' | { if [ "$trial" = "$entry" ]; then grep -v '^cairn_trial='; else cat; fi; } |
            { if [ "$bad" = "$entry" ]; then grep -v '^cairn_bad='; else cat; fi; } | grep -v '^$'
        echo "cairn_good=$entry"
    } > "$tmp"
    size="$(wc -c < "$tmp")"
    if [ "$size" -gt 1024 ]; then
        rm -f "$tmp"
        echo "cairn: GRUB environment block full" >&2
        return 1
    fi
    head -c "$((1024 - size))" /dev/zero | tr '\0' '#' >> "$tmp"
    dd if="$tmp" of="$env" bs=1024 count=1 conv=notrunc oflag=nofollow status=none
    rm -f "$tmp"
    sync
    echo "cairn: boot of $entry marked good"
}

# The boot partition mounted read-only by live-boot: written through that
# mount (a second, read-write mount of it would be refused).
# (Nothing on the partition runs, opens as a device, or is followed as a
# symlink: the flags the initramfs mounted it with, kept.)
opts=nosuid,nodev,noexec,nosymfollow
mark_good_at() {
    mount -o "remount,rw,$opts" "$1" && { mark_good "$1"; mount -o "remount,ro,$opts" "$1"; }
}

if [ -n "$entry" ]; then
    medium=/run/live/medium
    fstype="$(awk -v m="$medium" '$2 == m { print $3 }' /proc/mounts)"
    if [ -n "$fstype" ] && [ "$fstype" != tmpfs ] && [ "$fstype" != iso9660 ]; then
        # live-boot's medium: the boot partition itself.
        mark_good_at "$medium"
    elif awk '$2 == "/run/live/findiso" { f = 1 } END { exit !f }' /proc/mounts; then
        # An ISO file on the boot partition (findiso=): its partition.
        mark_good_at /run/live/findiso
    else
        # toram: the medium is in RAM; the boot partition is the one device
        # with the UUID GRUB booted from (cairn.boot=), or none is written.
        dev="$(blkid -c /dev/null -o device -t "UUID=$uuid" 2>/dev/null)"
        if [ -n "$uuid" ] && [ "$(echo "$dev" | grep -c .)" -eq 1 ]; then
            mnt="$(mktemp -d)"
            mount -o "$opts" "$dev" "$mnt" && { mark_good "$mnt"; umount "$mnt"; }
            rmdir "$mnt"
        fi
    fi
fi

# Units that failed on the way here, named before the marker (a test run
# that stops at the marker has them).
failed="$(systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{ printf "%s ", $1 }')"
if [ -n "$failed" ]; then
    echo "cairn: failed units: $failed" > /dev/kmsg 2>/dev/null
    [ -c /dev/ttyS1 ] && echo "cairn: failed units: $failed" > /dev/ttyS1 2>/dev/null
fi

msg="CAIRN-BOOTED profile=$CAIRN_PROFILE version=$CAIRN_VERSION"
echo "$msg" > /dev/kmsg 2>/dev/null
for t in /dev/ttyS1 /dev/ttyS0; do
    [ -c "$t" ] && echo "$msg" > "$t" 2>/dev/null
done
if grep -qw cairn.poweroff /proc/cmdline || [ "$(cut -d: -f1 /sys/class/dmi/id/product_serial 2>/dev/null)" = cairn-test-poweroff ]; then
    systemctl --no-block poweroff
fi
exit 0
