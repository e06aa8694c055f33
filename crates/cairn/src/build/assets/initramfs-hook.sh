#!/bin/sh
# cairn: coreutils' sha256sum in the initramfs (faster than busybox's) for
# the squashfs check in /lib/live/boot/9995-cairn.sh.
PREREQ=""
case "${1}" in
	prereqs)
		echo "${PREREQ}"
		exit 0
		;;
esac
. /usr/share/initramfs-tools/hook-functions
copy_exec /usr/bin/sha256sum /bin/cairn-sha256sum
