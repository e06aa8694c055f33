#!/bin/sh
# cairn: runs once the system is up (after multi-user.target).
# 1. Runs the profile's health check (/etc/cairn/health), when it has one.
#    When it passes (or there is none), marks the boot good for cairn's GRUB
#    boot counting: the menu entry that booted us (cairn.entry= on the
#    command line) becomes cairn_good in the GRUB environment block of the
#    boot disk, and a trial of this entry has passed: it stays the default
#    (a refusal of it, cairn_bad, that the initramfs recorded, is cleared).
#    When it fails, the boot is not marked good, and a boot on trial
#    reboots: boot counting then tries it again or falls back.
# 2. Says which image is running (console, second serial port, kernel log).
# 3. Powers off when a test asks for it (cairn.poweroff on the command line,
#    or DMI serial cairn-test-poweroff).
# (Few programs: under emulation each costs tens of milliseconds, and the
# boot is not over until this says so.)
set -f
[ -r /run/cairn/image.env ] || /usr/lib/cairn/image-env
. /run/cairn/image.env

# The command line this userspace runs by: the kernel's, or after a soft
# reboot the one cairn wrote for the image it switched to.
cmdline="$(/usr/lib/cairn/image-env --cmdline)"
entry=""
uuid=""
poweroff=""
args=""
{ read -r args < "$cmdline"; } 2>/dev/null
for p in $args; do
    case "$p" in
        cairn.entry=*) entry="${p#cairn.entry=}" ;;
        cairn.boot=*) uuid="${p#cairn.boot=}" ;;
        cairn.poweroff) poweroff=1 ;;
    esac
done

# Rewrites the 1024-byte environment block in place (same blocks, as GRUB's
# save_env expects): cairn_good=$entry (a trial of $entry stays: passed;
# each refusal of it, cairn_bad=$entry, goes). The new block is made by one awk, in
# the C locale (lengths in bytes), the entry read from the environment
# (never taken as escapes), in root's own /run/cairn.
mark_good() {
    env="$1/boot/grub/grubenv"
    [ -f "$env" ] || return 0
    [ -L "$env" ] && { echo "cairn: $env is a symlink: not written" >&2; return 1; }
    [ "$(wc -c < "$env")" -eq 1024 ] || { echo "cairn: $env is not a 1024-byte GRUB environment block" >&2; return 1; }
    tmp="${CAIRN_TEST_RUN:-/run/cairn}/grubenv.new"
    rm -f "$tmp"
    if ! CAIRN_ENTRY="$entry" LC_ALL=C awk '
        { line[NR] = $0 }
        END {
            entry = ENVIRON["CAIRN_ENTRY"]
            out = "# GRUB Environment Block\n"
            for (i = 1; i <= NR; i++) {
                l = line[i]
                if (l ~ /^#/ || l ~ /^cairn_good=/ || l == "") continue
                if (l == "cairn_bad=" entry) continue
                out = out l "\n"
            }
            out = out "cairn_good=" entry "\n"
            if (length(out) > 1024) exit 1
            while (length(out) < 1024) out = out "#"
            printf "%s", out
        }' "$env" > "$tmp"; then
        rm -f "$tmp"
        echo "cairn: GRUB environment block full" >&2
        return 1
    fi
    if [ "$(wc -c < "$tmp")" -ne 1024 ] ||
        ! dd if="$tmp" of="$env" bs=1024 count=1 conv=notrunc oflag=nofollow status=none; then
        rm -f "$tmp"
        echo "cairn: $env not written" >&2
        return 1
    fi
    rm -f "$tmp"
    sync
    echo "cairn: boot of $entry marked good"
}

# The boot partition mounted read-only by live-boot: written through that
# mount (a second, read-write mount of it would be refused).
# (Nothing on the partition runs, opens as a device, or is followed as a
# symlink: the flags the initramfs mounted it with, kept.)
opts=nosuid,nodev,noexec,nosymfollow
# One writer at a time: cairn pull and cairn reboot lock the partition's
# root directory (flock) as this does.
mark_good_at() {
    exec 9< "$1"
    flock -w 120 9 || echo "cairn: $1 stayed locked for 2 minutes: marking anyway" >&2
    mount -o "remount,rw,$opts" "$1" && { mark_good "$1"; mount -o "remount,ro,$opts" "$1"; }
    exec 9<&-
}

# The boot partition's root: live-boot's medium; the partition of an ISO
# file (findiso=); after toram the one device with the UUID GRUB booted
# from (cairn.boot=), mounted here read-only; or none.
# The verdict and the end of the check's output, kept on the boot
# partition for the report the fallback boot sends (cairn report:
# last-failure); /run does not survive the reboot.
keep_failure() {
    exec 9< "$1"
    flock -w 120 9 || echo "cairn: $1 stayed locked for 2 minutes: writing anyway" >&2
    if mount -o "remount,rw,$opts" "$1"; then
        d="$1/cairn"
        if [ ! -L "$d" ] && mkdir -p "$d" && [ ! -L "$d/health-failed" ]; then
            # (Never through whatever was planted there: a FIFO would hang the boot.)
            rm -f "$d/.health-failed.tmp"
            { echo "$entry: $health"; tail -c 4096 /run/cairn/health.log 2>/dev/null; } > "$d/.health-failed.tmp" &&
                mv -f "$d/.health-failed.tmp" "$d/health-failed"
        fi
        sync
        mount -o "remount,ro,$opts" "$1"
    fi
    exec 9<&-
}

root=""
mounted=""
if [ -n "$entry" ]; then
    medium=/run/live/medium
    fstype="$(awk -v m="$medium" '$2 == m { print $3 }' /proc/mounts)"
    if [ -n "$fstype" ] && [ "$fstype" != tmpfs ] && [ "$fstype" != iso9660 ]; then
        root="$medium"
    elif awk '$2 == "/run/live/findiso" { f = 1 } END { exit !f }' /proc/mounts; then
        root=/run/live/findiso
    else
        dev="$(blkid -c /dev/null -o device -t "UUID=$uuid" 2>/dev/null)"
        if [ -n "$uuid" ] && [ "$(echo "$dev" | grep -c .)" -eq 1 ]; then
            mkdir -p /run/cairn/boot
            mount -o "ro,$opts" "$dev" /run/cairn/boot && { root=/run/cairn/boot; mounted=1; }
        fi
    fi
fi
getenv() {
    [ -n "$root" ] && [ -f "$root/boot/grub/grubenv" ] && sed -n "s/^$1=//p" "$root/boot/grub/grubenv"
}

say() {
    echo "$1" > /dev/kmsg 2>/dev/null
    for t in /dev/ttyS1 /dev/ttyS0; do
        [ -c "$t" ] && echo "$1" > "$t" 2>/dev/null
    done
}

# The profile's health check decides whether this boot is good.
mkdir -p /run/cairn
health=passed
if [ -x /etc/cairn/health ]; then
    CAIRN_HEALTH_TIMEOUT=120
    [ -f /etc/cairn/health.env ] && . /etc/cairn/health.env
    timeout "$CAIRN_HEALTH_TIMEOUT" /etc/cairn/health > /run/cairn/health.log 2>&1
    rc=$?
    if [ "$rc" -eq 124 ]; then
        health="failed: no answer in ${CAIRN_HEALTH_TIMEOUT}s"
    elif [ "$rc" -ne 0 ]; then
        health="failed: exit status $rc"
    fi
fi
echo "$health" > /run/cairn/health
if [ "$health" != passed ]; then
    say "CAIRN-UNHEALTHY profile=$CAIRN_PROFILE version=$CAIRN_VERSION entry=$entry: $health"
    tail -n 5 /run/cairn/health.log 2>/dev/null | sed 's/^/cairn: health: /' > /dev/kmsg 2>/dev/null
    # On trial and never good: boot counting decides (another try, or the
    # last good image). Otherwise the machine stays up and says so.
    if [ -n "$entry" ] && [ "$(getenv cairn_trial)" = "$entry" ] && [ "$(getenv cairn_good)" != "$entry" ]; then
        say "cairn: $entry is on trial and failed its health check: rebooting"
        keep_failure "$root"
        [ -n "$mounted" ] && umount /run/cairn/boot
        SYSTEMCTL_SKIP_AUTO_SOFT_REBOOT=1 systemctl --no-block reboot
    fi
    exit 1
fi

if [ -n "$root" ]; then
    mark_good_at "$root"
    [ -n "$mounted" ] && umount /run/cairn/boot
fi

# Units that failed on the way here, named before the marker (a test run
# that stops at the marker has them).
failed="$(systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{ printf "%s ", $1 }')"
if [ -n "$failed" ]; then
    echo "cairn: failed units: $failed" > /dev/kmsg 2>/dev/null
    [ -c /dev/ttyS1 ] && echo "cairn: failed units: $failed" > /dev/ttyS1 2>/dev/null
fi

say "CAIRN-BOOTED profile=$CAIRN_PROFILE version=$CAIRN_VERSION"
serial=""
{ read -r serial < /sys/class/dmi/id/product_serial; } 2>/dev/null
if [ -n "$poweroff" ] || [ "${serial%%:*}" = cairn-test-poweroff ]; then
    systemctl --no-block poweroff
fi
exit 0
