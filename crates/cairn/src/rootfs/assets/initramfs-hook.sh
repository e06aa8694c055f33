#!/bin/sh
# cairn: what /lib/live/boot/9995-cairn.sh needs in the initramfs:
# veritysetup and dm-verity (every layer is mounted through it), and
# util-linux's blkid (the boot partition is found by its UUID, exactly once).
PREREQ=""
case "${1}" in
	prereqs)
		echo "${PREREQ}"
		exit 0
		;;
esac
. /usr/share/initramfs-tools/hook-functions

# copy_exec of the first of the candidates that exists, as $2; else fail.
cairn_copy ()
{
	for f in ${1}
	do
		if [ -x "${f}" ]
		then
			copy_exec "${f}" "${2}"
			return 0
		fi
	done
	echo "cairn: ${2##*/} not found (${3}): the image could not check its boot" >&2
	exit 1
}

cairn_copy "/usr/sbin/veritysetup /sbin/veritysetup" /sbin/veritysetup cryptsetup-bin
cairn_copy "/usr/sbin/blkid /sbin/blkid" /sbin/blkid util-linux
manual_add_modules dm-verity
