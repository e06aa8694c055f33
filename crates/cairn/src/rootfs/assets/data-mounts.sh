#!/bin/sh
# cairn: mounts the data partitions this image declares (systemd generator),
# decided at each boot from the block devices the kernel has now — no device
# timeout, so a slow machine never loses its data partition to a race.
# For each label: the device with it on the boot disk (the disk holding the
# partition GRUB booted from, cairn.boot=), else the only device with it
# anywhere (a machine without a boot disk); two candidates and none of them
# on the boot disk: none is mounted. Mounted nosuid,nodev: whoever wrote a
# partition with that label gets no setuid program or device node from it.
# A label that is absent is left out (cairn-data.service says so).
out="${1:?usage: cairn-data-mounts NORMAL-DIR [EARLY LATE [SYS CMDLINE]]}"
# systemd passes three directories; a test passes a /sys and a command line
# of its own as the 4th and 5th.
sys="${4:-/sys}"
cmdline="${5:-/proc/cmdline}"
labels="@LABELS@"

say() { echo "cairn: $*" > /dev/kmsg 2>/dev/null; }

# The whole disk a block device belongs to (itself if not a partition).
disk_of() {
    b="$(basename "$(readlink -f "$1")")"
    if [ -e "$sys/class/block/$b/partition" ]; then
        basename "$(readlink -f "$sys/class/block/$b/..")"
    else
        echo "$b"
    fi
}

boot_uuid=""
for p in $(cat "$cmdline"); do
    case "$p" in cairn.boot=*) boot_uuid="${p#cairn.boot=}" ;; esac
done
boot_disk=""
if [ -n "$boot_uuid" ]; then
    d="$(blkid -c /dev/null -o device -t "UUID=$boot_uuid" 2>/dev/null)"
    [ "$(echo "$d" | grep -c .)" -eq 1 ] && boot_disk="$(disk_of "$d")"
fi

# The device to mount for label $1, or nothing.
pick() {
    all="$(blkid -c /dev/null -o device -t "LABEL=$1" 2>/dev/null)"
    n="$(echo "$all" | grep -c .)"
    [ "$n" -eq 0 ] && return 1
    if [ -n "$boot_disk" ]; then
        same=""
        for d in $all; do
            [ "$(disk_of "$d")" = "$boot_disk" ] && same="$same $d"
        done
        set -- $same
        if [ $# -eq 1 ]; then echo "$1"; return 0; fi
        if [ $# -gt 1 ]; then
            say "$# partitions labelled $1 on the boot disk ($*): none is mounted"
            return 1
        fi
    fi
    if [ "$n" -eq 1 ]; then echo "$all"; return 0; fi
    say "$n devices labelled $1 ($(echo $all)), none on the boot disk: none is mounted"
    return 1
}

mkdir -p "$out/local-fs.target.wants"
for label in $labels; do
    unit="$(systemd-escape --path --suffix=mount "/$label")"
    dev="$(pick "$label")"
    uuid=""
    [ -n "$dev" ] && uuid="$(blkid -c /dev/null -o value -s UUID "$dev" 2>/dev/null)"
    case "$uuid" in
        ""|*[!0-9A-Fa-f-]*)
            [ -z "$dev" ] || say "$dev (label $label) has no usable file system UUID: not mounted"
            say "no partition labelled $label mounted: its data paths stay in RAM"
            continue
            ;;
    esac
    what="/dev/disk/by-uuid/$uuid"
    fsck="systemd-fsck@$(systemd-escape --path "$what").service"
    cat > "$out/$unit" <<UNIT
[Unit]
Description=cairn data partition $label ($dev)
Before=local-fs.target cairn-data.service
Requires=$fsck
After=$fsck

[Mount]
What=$what
Where=/$label
Options=nosuid,nodev
UNIT
    ln -sf "../$unit" "$out/local-fs.target.wants/$unit"
done
