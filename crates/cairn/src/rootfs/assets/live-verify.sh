# cairn: sourced by live-boot in the initramfs after its own components
# (/lib/live/boot/9995-cairn.sh sorts after 9990-*), so these definitions
# replace live-boot's where they share a name.
#
# What boots is exactly what the image's key signed, and nothing else:
# - GRUB checked the kernel, the initrd and the image's boot arguments
#   (boot.cfg) against their signatures, and added the boot partition's
#   UUID (cairn.boot=), the image directory (live-media-path=) and the menu
#   entry (cairn.entry=), whose names it checked.
# - Here every cairn argument must appear exactly once and be well formed;
#   live-boot arguments that would take layers or an overlay from anywhere
#   else are refused.
# - The medium is the partition with that UUID, and only it: none, or more
#   than one device carrying it, is a refusal.
# - Or, on a network boot (cairn.fetch=), the layers come from the web
#   server GRUB loaded everything from, into RAM, and every block of every
#   layer is read once through dm-verity (checked against its signed root
#   hash by the kernel) before any layer is mounted.
# - Exactly the layers named in cairn.verity= are mounted, in that order,
#   each through dm-verity with its signed root hash: every block is checked
#   as it is read, so what was checked is what is used (no check-then-read),
#   and a changed block is an I/O error, never data. No module file is read,
#   nothing is globbed; any other layer-like file in the image directory is
#   a sign of tampering and refuses the boot.
# - A refusal is said on the console, recorded in GRUB's environment block
#   (cairn_bad: GRUB then boots another image), and the machine reboots —
#   and so does every `panic` of live-boot and initramfs-tools (which would
#   otherwise open a root shell on the console).
# - The medium stays mounted in the running system: without setuid, device
#   nodes, execution or symlinks (nosuid,nodev,noexec,nosymfollow).

# Upper-case NAME=value kernel arguments reach the initramfs as environment
# variables, and live-boot takes these as its settings: none of those that
# move the root, the layers or the overlay elsewhere is kept (cairn_parse
# refuses such arguments, too).
unset MODULETORAMFILE MODULETORAM PLAIN_ROOT PERSISTENCE PERSISTENCE_MEDIA \
	PERSISTENCE_METHOD NFS_COW NOPERSISTENCE FROMISO FINDISO LIVE_MEDIA \
	LIVE_MEDIA_OFFSET LIVE_MEDIA_PATH LIVE_MEDIA_TIMEOUT EXPOSED_ROOT \
	SKIP_UNION_MOUNTS FETCH HTTPFS FTPFS NETBOOT ISCSI_PORTAL ROOT TODISK \
	TORAM UNIONTYPE DM_VERITY_ROOT_HASH CAIRN_PARSED

cairn_say ()
{
	echo "cairn: ${*}" > /dev/console 2>/dev/null
	echo "cairn: ${*}" > /dev/kmsg 2>/dev/null
}

# Sets NAME=VALUE in a 1024-byte GRUB environment block, in place (GRUB's
# save_env rewrites the same blocks).
cairn_env_set ()
{
	_cairn_env="${1}"
	[ -f "${_cairn_env}" ] && [ ! -L "${_cairn_env}" ] || return 1
	[ "$(wc -c < "${_cairn_env}")" -eq 1024 ] || return 1
	{
		echo "# GRUB Environment Block"
		grep -v '^#' "${_cairn_env}" | grep -v "^${2}=" | grep -v '^$'
		echo "${2}=${3}"
	} > /tmp/cairn-env
	_cairn_size="$(wc -c < /tmp/cairn-env)"
	[ "${_cairn_size}" -le 1024 ] || return 1
	head -c "$((1024 - _cairn_size))" /dev/zero | tr '\0' '#' >> /tmp/cairn-env
	dd if=/tmp/cairn-env of="${_cairn_env}" bs=1024 count=1 conv=notrunc 2>/dev/null
	sync
}

# The kernel command line (a function: the tests give another).
cairn_cmdline ()
{
	cat /proc/cmdline
}

# Reboots, and never returns: a refusal must not fall through into a boot.
cairn_reboot ()
{
	sleep 5
	reboot -f
	echo b > /proc/sysrq-trigger
	while :
	do
		sleep 3600
	done
}

cairn_refuse ()
{
	cairn_say "REFUSING TO BOOT ${CAIRN_WHAT:-this image}: ${*}"
	# Tell GRUB: this entry is not booted again by default.
	if [ -n "${CAIRN_ENTRY}" ] && [ -n "${CAIRN_MEDIUM}" ] &&
		mount -o "remount,rw,${CAIRN_MEDIUM_OPTS}" "${CAIRN_MEDIUM}" 2>/dev/null
	then
		cairn_env_set "${CAIRN_MEDIUM}/boot/grub/grubenv" cairn_bad "${CAIRN_ENTRY}" &&
			cairn_say "${CAIRN_ENTRY} marked refused: GRUB boots another image next"
		mount -o "remount,ro,${CAIRN_MEDIUM_OPTS}" "${CAIRN_MEDIUM}" 2>/dev/null
	fi
	cairn_reboot
}

# How the medium stays mounted: nothing on it runs, no device node on it
# opens, no symlink on it is followed.
CAIRN_MEDIUM_OPTS="nosuid,nodev,noexec,nosymfollow"

# initramfs-tools' and live-boot's last resort is a shell on the console;
# on a cairn image it is a refusal (and a reboot).
panic ()
{
	cairn_refuse "the boot could not go on: ${*}"
}

# A name cairn lets reach a path: letters, digits, . _ + - (not first).
cairn_name_ok ()
{
	case "${1}" in
		""|[!A-Za-z0-9]*|*[!A-Za-z0-9._+-]*)
			return 1
			;;
	esac
	return 0
}

# Reads and checks the kernel command line once: CAIRN_LAYERS (name:hash
# pairs), CAIRN_IMAGE, CAIRN_BOOT, CAIRN_ENTRY, CAIRN_DIR.
cairn_parse ()
{
	[ -n "${CAIRN_PARSED}" ] && return 0
	CAIRN_PARSED=1
	_n_verity=0; _n_image=0; _n_boot=0; _n_entry=0; _n_path=0; _n_findiso=0; _n_fetch=0
	CAIRN_LAYERS=""; CAIRN_IMAGE=""; CAIRN_BOOT=""; CAIRN_ENTRY=""; CAIRN_DIR=""; CAIRN_FETCH=""
	for _p in $(cairn_cmdline)
	do
		case "${_p}" in
			cairn.verity=*)
				_n_verity=$((_n_verity + 1)); CAIRN_LAYERS="${_p#cairn.verity=}" ;;
			cairn.image=*)
				_n_image=$((_n_image + 1)); CAIRN_IMAGE="${_p#cairn.image=}" ;;
			cairn.boot=*)
				_n_boot=$((_n_boot + 1)); CAIRN_BOOT="${_p#cairn.boot=}" ;;
			cairn.entry=*)
				_n_entry=$((_n_entry + 1)); CAIRN_ENTRY="${_p#cairn.entry=}" ;;
			cairn.fetch=*)
				_n_fetch=$((_n_fetch + 1)); CAIRN_FETCH="${_p#cairn.fetch=}" ;;
			cairn.poweroff)
				;;
			cairn.*)
				cairn_refuse "unknown argument ${_p}" ;;
			live-media-path=*)
				_n_path=$((_n_path + 1)); CAIRN_DIR="${_p#live-media-path=}" ;;
			findiso=*)
				_n_findiso=$((_n_findiso + 1)) ;;
			module=*|toram=*|todisk=*|fetch=*|httpfs=*|ftpfs=*|netboot=*|nfsroot=*|nfsopts=*|nfsoverlay=*|iscsi=*|\
			live-media=*|bootfrom=*|live-media-offset=*|fromiso=*|isofrom=*|plainroot|root=*|exposedroot|skipunion|\
			persistence|persistence-*|dm-verity-*|swap)
				cairn_refuse "argument ${_p} is not allowed: a cairn image mounts only its signed layers from its boot partition" ;;
			init=*|rdinit=*|break|break=*|systemd.debug_shell*|systemd.debug-shell*)
				cairn_refuse "argument ${_p} is not allowed: it would run something other than the image's init, or a shell" ;;
			BOOT_IMAGE=*)
				;;
			[A-Z_]*=*)
				case "${_p%%=*}" in
					*[!A-Z0-9_]*) ;;
					*) cairn_refuse "argument ${_p} is not allowed: it would become an environment variable of the initramfs" ;;
				esac
				;;
		esac
	done
	CAIRN_WHAT="${CAIRN_DIR:-this image}"
	# From a boot partition (cairn.boot=) or over the network (cairn.fetch=,
	# the web server GRUB loaded everything from): one of them, once.
	_from="boot:${_n_boot}"
	if [ "${_n_fetch}" -gt 0 ]
	then
		[ "${_n_boot}" -eq 0 ] || cairn_refuse "both cairn.boot= and cairn.fetch= on the command line"
		[ "${_n_findiso}" -eq 0 ] || cairn_refuse "both findiso= and cairn.fetch= on the command line"
		_from="fetch:${_n_fetch}"
	fi
	for _a in "verity:${_n_verity}" "image:${_n_image}" "${_from}" "live-media-path:${_n_path}"
	do
		case "${_a}" in
			*:1) ;;
			*:0) cairn_refuse "no ${_a%:*} argument on the command line" ;;
			*) cairn_refuse "the ${_a%:*} argument appears ${_a##*:} times" ;;
		esac
	done
	[ "${_n_entry}" -le 1 ] || cairn_refuse "cairn.entry= appears ${_n_entry} times"
	[ "${_n_findiso}" -le 1 ] || cairn_refuse "findiso= appears ${_n_findiso} times"
	case "${CAIRN_DIR}" in
		/live) ;;
		/images/*/*)
			_p="${CAIRN_DIR#/images/}"
			cairn_name_ok "${_p%%/*}" && cairn_name_ok "${_p#*/}" ||
				cairn_refuse "bad image directory ${CAIRN_DIR}" ;;
		*) cairn_refuse "bad image directory ${CAIRN_DIR}" ;;
	esac
	if [ -n "${CAIRN_FETCH}" ]
	then
		# http://HOST[:PORT]: a name or an address, a port, nothing else.
		_hp="${CAIRN_FETCH#http://}"
		case "${_hp}" in
			"${CAIRN_FETCH}"|""|[!A-Za-z0-9]*|*[!A-Za-z0-9.:-]*|*:*:*|*:)
				cairn_refuse "bad server ${CAIRN_FETCH} (http://HOST[:PORT])" ;;
		esac
		case "${CAIRN_DIR}" in
			/images/*/*) ;;
			*) cairn_refuse "bad image directory ${CAIRN_DIR} for a network boot" ;;
		esac
	else
		case "${CAIRN_BOOT}" in
			""|*[!0-9A-Fa-f-]*) cairn_refuse "bad boot partition UUID ${CAIRN_BOOT}" ;;
		esac
	fi
	case "${CAIRN_ENTRY}" in
		*[!A-Za-z0-9._+/\>-]*) cairn_refuse "bad menu entry ${CAIRN_ENTRY}" ;;
	esac
	case "${CAIRN_IMAGE}" in
		*/*) cairn_name_ok "${CAIRN_IMAGE%%/*}" && cairn_name_ok "${CAIRN_IMAGE#*/}" ||
			cairn_refuse "bad image name ${CAIRN_IMAGE}" ;;
		*) cairn_refuse "bad image name ${CAIRN_IMAGE}" ;;
	esac
	# The directory is the signed image's own (an ISO's is /live): a
	# boot.cfg signed for one image never runs with another's files.
	case "${CAIRN_DIR}" in
		/live) ;;
		*) [ "${CAIRN_DIR}" = "/images/${CAIRN_IMAGE}" ] ||
			cairn_refuse "the directory ${CAIRN_DIR} is not that of the signed image ${CAIRN_IMAGE}" ;;
	esac
	[ -n "${CAIRN_LAYERS}" ] || cairn_refuse "cairn.verity= names no layer"
	for _s in $(echo "${CAIRN_LAYERS}" | tr ',' ' ')
	do
		_name="${_s%%:*}"
		_hash="${_s#*:}"
		cairn_name_ok "${_name}" || cairn_refuse "bad layer name ${_name}"
		case "${_name}" in
			*.squashfs) ;;
			*) cairn_refuse "layer ${_name} is not a squashfs" ;;
		esac
		case "${_hash}" in
			*[!0-9a-f]*) cairn_refuse "bad root hash for ${_name}" ;;
		esac
		[ "${#_hash}" -eq 64 ] || cairn_refuse "bad root hash for ${_name}"
	done
	CAIRN_WHAT="${CAIRN_IMAGE} (${CAIRN_DIR})"
}

# The network devices the kernel found, a name a line: real devices only
# (not lo, dummies, tunnels or bridges). Functions: the tests give others.
cairn_nics ()
{
	for _nic in /sys/class/net/*
	do
		[ -e "${_nic}/device" ] && echo "${_nic##*/}"
	done
	return 0
}

cairn_nic_is_up ()
{
	_flags="$(cat "/sys/class/net/${1}/flags" 2>/dev/null)"
	[ -n "${_flags}" ] && [ $((_flags & 1)) -eq 1 ]
}

cairn_carrier ()
{
	[ "$(cat "/sys/class/net/${1}/carrier" 2>/dev/null)" = 1 ]
}

cairn_has_ipv4 ()
{
	ip -4 addr show dev "${1}" 2>/dev/null | grep -q "inet "
}

# Before live-boot's DHCP: each network device that is down (only those
# ethdevice= names, when it is given) is brought up, then a wait (5 s at
# most) for a carrier on one of them. klibc's ipconfig, which live-boot's
# DHCP runs, waits about ten seconds on an interface it brings up itself,
# about one on one already up. CAIRN_RAISED: the ones brought up here.
cairn_links_up ()
{
	udevadm trigger
	udevadm settle --timeout=30
	CAIRN_RAISED=""
	for _dev in $(cairn_nics)
	do
		cairn_name_ok "${_dev}" || continue
		if [ -n "${ETHDEVICE}" ]
		then
			case ",${ETHDEVICE}," in
				*",${_dev},"*) ;;
				*) continue ;;
			esac
		fi
		cairn_nic_is_up "${_dev}" && continue
		ip link set dev "${_dev}" up && CAIRN_RAISED="${CAIRN_RAISED} ${_dev}"
	done
	_w=0
	while [ -n "${CAIRN_RAISED}" ] && [ "${_w}" -lt 50 ]
	do
		for _dev in ${CAIRN_RAISED}
		do
			cairn_carrier "${_dev}" && return 0
		done
		sleep 0.1
		_w=$((_w + 1))
	done
	return 0
}

# After live-boot's DHCP: what cairn brought up and got no IPv4 address
# goes down again (it would otherwise stay up, unmanaged, into the system).
cairn_links_down ()
{
	for _dev in ${CAIRN_RAISED}
	do
		cairn_has_ipv4 "${_dev}" || ip link set dev "${_dev}" down
	done
	return 0
}

# A network boot: the network as live-boot brings it up for its own fetch=
# (DHCP on every interface, once cairn_links_up has them up), the signed
# layers and their hash trees fetched from the server GRUB loaded
# everything from into RAM (a tmpfs as the medium). Every block of every
# layer is then checked against its signed root hash before anything is
# mounted, and a changed byte named, when mount_images_in_directory opens
# them through dm-verity (cairn_check_layer). Prints the medium's path.
cairn_net_fetch ()
{
	cairn_links_up > /dev/console 2>&1
	do_netsetup > /dev/console 2>&1
	cairn_links_down > /dev/console 2>&1
	_mnt=/run/live/medium
	mkdir -p "${_mnt}"
	grep -q " ${_mnt} " /proc/mounts ||
		mount -t tmpfs -o "size=90%,mode=0755" tmpfs "${_mnt}" ||
		cairn_refuse "no file system in RAM for the layers"
	_dir="${_mnt}${CAIRN_DIR}"
	mkdir -p "${_dir}"
	for _f in $(cairn_layer_files)
	do
		rm -f "${_dir}/${_f}"
		cairn_say "fetching ${CAIRN_FETCH}${CAIRN_DIR}/${_f}"
		# (busybox's wget crashes with -T: a whole-file limit instead.)
		timeout 1800 wget -q -O "${_dir}/${_f}" "${CAIRN_FETCH}${CAIRN_DIR}/${_f}" 2> /tmp/cairn-wget ||
			cairn_refuse "${_f}: could not be fetched from ${CAIRN_FETCH} ($(tail -n 1 /tmp/cairn-wget))"
	done
	# (Every block is checked when the layers are opened through dm-verity,
	# before any is mounted: mount_images_in_directory.)
	echo "${_mnt}"
}

# live-boot asks with growing $1 (seconds waited): the medium is the one
# device whose file system has the UUID GRUB booted from — or, on a network
# boot, the layers fetched into RAM.
find_livefs ()
{
	cairn_parse
	if [ -n "${CAIRN_FETCH}" ]
	then
		cairn_net_fetch
		return 0
	fi
	# Every device the kernel found at boot has its node before we count.
	if [ -z "${CAIRN_SETTLED}" ]
	then
		udevadm settle --timeout=30 2>/dev/null
		CAIRN_SETTLED=1
	fi
	_devs="$(blkid -c /dev/null -o device -t "UUID=${CAIRN_BOOT}" 2>/dev/null)"
	_count="$(echo "${_devs}" | grep -c .)"
	if [ "${_count}" -eq 0 ]
	then
		[ "${1:-0}" -ge 59 ] && cairn_refuse "no partition with UUID ${CAIRN_BOOT} (the boot partition GRUB checked)"
		return 1
	fi
	if [ "${_count}" -gt 1 ]
	then
		cairn_refuse "${_count} devices carry the boot partition's UUID ${CAIRN_BOOT} ($(echo ${_devs})): one is a copy"
	fi
	if check_dev "null" "${_devs}" "skip_uuid_check"
	then
		return 0
	fi
	[ "${1:-0}" -ge 59 ] && cairn_refuse "the partition with UUID ${CAIRN_BOOT} holds no image at ${LIVE_MEDIA_PATH}"
	return 1
}

# Called by live-boot with the medium it mounted: where a refusal is
# recorded (the boot partition, which holds the ISO file with findiso=).
Verify_checksums ()
{
	CAIRN_MEDIUM="${1}"
	[ -n "${FINDISO}" ] && CAIRN_MEDIUM=/run/live/findiso
	cairn_parse
	# Over the network there is no boot partition to record a refusal on.
	[ -n "${CAIRN_FETCH}" ] && CAIRN_MEDIUM=""
	for _m in "${1}" /run/live/findiso
	do
		if grep -q " ${_m} " /proc/mounts
		then
			mount -o "remount,ro,${CAIRN_MEDIUM_OPTS}" "${_m}" ||
				cairn_refuse "cannot remount ${_m} ${CAIRN_MEDIUM_OPTS}"
		fi
	done
}

# The signed layers and their hash trees, in order: "name name.verity ...".
cairn_layer_files ()
{
	for _s in $(echo "${CAIRN_LAYERS}" | tr ',' ' ')
	do
		echo "${_s%%:*} ${_s%%:*}.verity"
	done
}

# Refuses an image directory holding a layer-like file or a directory that
# is not one of the signed layers: live-boot would have stacked it.
cairn_check_dir ()
{
	_wanted=" $(cairn_layer_files | tr '\n' ' ') "
	_extra=""
	for _f in "${1}"/* "${1}"/.[!.]*
	do
		[ -e "${_f}" ] || [ -L "${_f}" ] || continue
		_b="${_f##*/}"
		if [ -d "${_f}" ] || [ -L "${_f}" ]
		then
			_extra="${_extra} ${_b}"
			continue
		fi
		case "${_b}" in
			*.squashfs|*.verity|*.module|*.ext2|*.ext3|*.ext4|*.xfs|*.jffs2|*.btrfs|*.dir)
				case "${_wanted}" in
					*" ${_b} "*) ;;
					*) _extra="${_extra} ${_b}" ;;
				esac
				;;
		esac
	done
	[ -z "${_extra}" ] || cairn_refuse "files no signature covers in the image directory:${_extra}"
}

# toram: only this image's signed layers and their hash trees go to RAM
# (live-boot would copy the whole medium: every image on the disk); they
# are then mounted from there, checked by dm-verity like on the disk.
copy_live_to ()
{
	_from="${1}"
	_to="${1}_swap"
	[ "${2}" = "ram" ] || cairn_refuse "todisk is not supported by cairn images"
	cairn_parse
	_src="${_from}/${LIVE_MEDIA_PATH}"
	cairn_check_dir "${_src}"
	_kb=0
	for _f in $(cairn_layer_files)
	do
		[ -f "${_src}/${_f}" ] || cairn_refuse "${_f} is missing"
		_kb=$((_kb + $(du -k "${_src}/${_f}" | cut -f1)))
	done
	_free="$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)"
	if [ "${_free}" -lt "$((_kb + 65536))" ]
	then
		cairn_say "not enough memory for toram (${_kb} KiB of layers, ${_free} KiB available): reading from the disk"
		return 1
	fi
	cairn_say "copying ${CAIRN_IMAGE}'s layers to RAM (${_kb} KiB)"
	mkdir -p "${_to}"
	mount -t tmpfs -o "size=$((_kb + 16384))k" tmpfs "${_to}"
	mkdir -p "${_to}/${LIVE_MEDIA_PATH}"
	for _f in $(cairn_layer_files)
	do
		cp "${_src}/${_f}" "${_to}/${LIVE_MEDIA_PATH}/" || cairn_refuse "copying ${_f} to RAM failed"
	done
	umount "${_from}"
	mount -r -o move "${_to}" "${_from}"
	mount -o "remount,ro,${CAIRN_MEDIUM_OPTS}" "${_from}"
	rmdir "${_to}"
	# The boot partition stays reachable for a refusal's mark only when it
	# holds the ISO file (findiso); after an in-RAM copy of its image it is
	# gone.
	[ -n "${FINDISO}" ] || CAIRN_MEDIUM=""
	return 0
}

# Checks layer $1, opened through dm-verity as $2 from the file $3:
# - the tree's parameters come from its superblock, which the root hash
#   does not cover: only SHA-256 trees of the format cairn makes are taken,
#   and the device must be the whole file (a superblock may claim fewer
#   blocks: the root hash stays the same, the layer's end is cut off), with
#   the squashfs its first block (checked) holds fitting in it;
# - fetched over the network, the layer is read whole through dm-verity,
#   every block checked by the kernel against the signed root hash; a
#   block that differs is an I/O error, and the kernel marks the device
#   corrupted: both are asked (a dd that stops at an error and says
#   nothing is not believed).
cairn_check_layer ()
{
	DM_DISABLE_UDEV=1 veritysetup status "${2}" > /tmp/cairn-verity 2>&1
	if ! grep -Eiq '^ *hash (name|algorithm): *sha256$' /tmp/cairn-verity ||
		! grep -Eiq '^ *hash type: *1$' /tmp/cairn-verity
	then
		cairn_refuse "${1}: its hash tree is not a SHA-256 dm-verity tree of format 1 ($(tr -s ' \n' ' ' < /tmp/cairn-verity | head -c 300))"
	fi
	_how="it differs from what was signed"
	[ -z "${CAIRN_FETCH}" ] || _how="fetched, but ${_how}"
	_covered="$(blockdev --getsize64 "/dev/mapper/${2}" 2>/dev/null)"
	_bytes="$(stat -c %s "${3}" 2>/dev/null)"
	case "${_covered}:${_bytes}" in
		*[!0-9:]*|:*|*:) cairn_refuse "${1}: the sizes of its device and file are unknown (${_covered:-?}, ${_bytes:-?})" ;;
	esac
	[ "${_covered}" = "${_bytes}" ] ||
		cairn_refuse "${1}: ${_how} (its hash tree covers ${_covered} bytes of ${_bytes})"
	# Both sizes come from the medium (a layer cut short and a tree that
	# claims as much agree): the squashfs's own superblock, in the first
	# block, read through dm-verity (so checked), must be one and fit.
	dd if="/dev/mapper/${2}" of=/tmp/cairn-sb bs=4096 count=1 2> /dev/null ||
		cairn_refuse "${1}: dm-verity refused its blocks: ${_how} (its first block)"
	_magic="$(od -A n -t x1 -N 4 /tmp/cairn-sb | tr -d ' \n')"
	_used="$(od -A n -t u8 -j 40 -N 8 /tmp/cairn-sb | tr -d ' \n')"
	[ "${_magic}" = 68737173 ] || cairn_refuse "${1}: ${_how} (no squashfs in its first block)"
	case "${_used}" in
		''|*[!0-9]*) cairn_refuse "${1}: ${_how} (its squashfs states no size)" ;;
	esac
	[ "$(( (_used + 4095) / 4096 * 4096 ))" -le "${_covered}" ] ||
		cairn_refuse "${1}: ${_how} (its squashfs needs ${_used} bytes, its hash tree covers ${_covered})"
	[ -n "${CAIRN_FETCH}" ] || return 0
	if ! dd if="/dev/mapper/${2}" of=/dev/null bs=1M 2> /tmp/cairn-dd
	then
		cairn_refuse "${1}: ${_how} ($(tail -n 1 /tmp/cairn-dd))"
	fi
	DM_DISABLE_UDEV=1 veritysetup status "${2}" > /tmp/cairn-verity 2>&1
	grep -Eq '^ *status: *verified( |$)' /tmp/cairn-verity ||
		cairn_refuse "${1}: ${_how} (dm-verity status: $(sed -n 's/^ *status: *//p' /tmp/cairn-verity))"
	cairn_say "${1}: fetched; every block matches its signed root hash"
}

# Mounts exactly the signed layers through dm-verity, then lets live-boot
# stack them (a module list cairn writes in RAM, naming the mounted
# directories: live-boot takes a directory as it is). Every layer is
# opened and checked first, then they are mounted: nothing is mounted
# while a layer is unchecked. Layers fetched over the network are read
# whole through dm-verity on the way (every block checked by the kernel
# against the signed root hash): a changed byte is a refusal here, not an
# I/O error later. (The mount's reads are checked again by dm-verity.)
mount_images_in_directory ()
{
	cairn_parse
	_dir="${1}/${LIVE_MEDIA_PATH}"
	cairn_check_dir "${_dir}"
	modprobe -q loop 2>/dev/null
	modprobe -q dm-verity 2>/dev/null
	command -v veritysetup > /dev/null || cairn_refuse "veritysetup is missing from the initramfs"
	mkdir -p /run/live/rootfs /run/cairn/stack
	: > /run/cairn/stack/cairn.module
	_i=0
	for _s in $(echo "${CAIRN_LAYERS}" | tr ',' ' ')
	do
		_name="${_s%%:*}"
		_root="${_s#*:}"
		[ -f "${_dir}/${_name}" ] || cairn_refuse "${_name} is missing"
		[ -f "${_dir}/${_name}.verity" ] || cairn_refuse "${_name}.verity is missing"
		_data="$(losetup -f --show -r "${_dir}/${_name}" 2>/tmp/cairn-loop)" ||
			cairn_refuse "${_name}: no loop device ($(tail -n 1 /tmp/cairn-loop))"
		_tree="$(losetup -f --show -r "${_dir}/${_name}.verity" 2>/tmp/cairn-loop)" ||
			cairn_refuse "${_name}.verity: no loop device ($(tail -n 1 /tmp/cairn-loop))"
		# (DM_DISABLE_UDEV: the initramfs has no device-mapper udev rules;
		# libdevmapper makes the node itself instead of waiting for udev.)
		if ! DM_DISABLE_UDEV=1 veritysetup open "${_data}" "cairn-layer-${_i}" "${_tree}" "${_root}" > /tmp/cairn-verity 2>&1
		then
			cairn_refuse "${_name}: its hash tree does not match the signed root hash ($(tail -n 1 /tmp/cairn-verity))"
		fi
		cairn_check_layer "${_name}" "cairn-layer-${_i}" "${_dir}/${_name}"
		_i=$((_i + 1))
	done
	_i=0
	for _s in $(echo "${CAIRN_LAYERS}" | tr ',' ' ')
	do
		_name="${_s%%:*}"
		_root="${_s#*:}"
		mkdir -p "/run/live/rootfs/${_name}"
		if ! mount -t squashfs -o ro "/dev/mapper/cairn-layer-${_i}" "/run/live/rootfs/${_name}" 2> /tmp/cairn-mount
		then
			cairn_refuse "${_name}: dm-verity refused its blocks: it differs from what was signed ($(tail -n 1 /tmp/cairn-mount))"
		fi
		cairn_say "${_name}: mounted through dm-verity (root hash ${_root%${_root#????????????}}… signed)"
		ln -s "/run/live/rootfs/${_name}" "/run/cairn/stack/${_i}-${_name}"
		echo "${_i}-${_name}" >> /run/cairn/stack/cairn.module
		_i=$((_i + 1))
	done
	MODULE=cairn
	setup_unionfs /run/cairn/stack "${2}"
}
