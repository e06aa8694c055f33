# cairn: sourced by live-boot in the initramfs, after its own components
# (/lib/live/boot/9995-cairn.sh sorts after 9990-*), so these definitions
# replace live-boot's.
#
# The kernel command line, signed with the image (boot.cfg), carries
# cairn.sha256=LAYER:SHA256[,LAYER:SHA256...]. Every layer is checked before
# live-boot mounts it; a mismatch is said on the console and the machine
# reboots (back to the menu, where boot counting falls back) -- it never
# boots. With toram, only this image's layers are copied to RAM (live-boot
# would copy the whole medium: every image on the disk) and the copy in RAM is
# what gets checked.

cairn_say ()
{
	echo "cairn: ${*}" > /dev/console 2>/dev/null
	echo "cairn: ${*}" > /dev/kmsg 2>/dev/null
}

cairn_refuse ()
{
	cairn_say "REFUSING TO BOOT ${LIVE_MEDIA_PATH}: ${*}"
	sleep 5
	reboot -f
	echo b > /proc/sysrq-trigger
}

cairn_verify ()
{
	_cairn_dir="${1}/${LIVE_MEDIA_PATH}"
	_cairn_specs=""
	for _cairn_p in $(cat /proc/cmdline)
	do
		case "${_cairn_p}" in
			cairn.sha256=*)
				_cairn_specs="$(echo "${_cairn_p#cairn.sha256=}" | tr ',' ' ')"
				;;
		esac
	done
	if [ -z "${_cairn_specs}" ]
	then
		cairn_say "no cairn.sha256= on the command line: squashfs not verified"
		return 0
	fi
	_cairn_sum="sha256sum"
	if [ -x /bin/cairn-sha256sum ]
	then
		_cairn_sum="/bin/cairn-sha256sum"
	fi
	for _cairn_s in ${_cairn_specs}
	do
		_cairn_file="${_cairn_s%%:*}"
		_cairn_want="${_cairn_s#*:}"
		case "${_cairn_file}" in
			*/*|..*|"")
				cairn_refuse "bad layer name ${_cairn_file}"
				;;
		esac
		if [ ! -f "${_cairn_dir}/${_cairn_file}" ]
		then
			cairn_refuse "${_cairn_file} is missing"
		fi
		_cairn_got="$(${_cairn_sum} "${_cairn_dir}/${_cairn_file}" 2>/dev/null)"
		_cairn_got="${_cairn_got%% *}"
		if [ "${_cairn_got}" != "${_cairn_want}" ]
		then
			cairn_refuse "${_cairn_file}: SHA-256 mismatch (signed ${_cairn_want}, found ${_cairn_got:-unreadable})"
		fi
		cairn_say "${_cairn_file}: SHA-256 verified"
	done
}

Verify_checksums ()
{
	# With toram the copy in RAM is checked (copy_live_to below).
	if [ -z "${TORAM}" ]
	then
		cairn_verify "${1}"
	fi
}

copy_live_to ()
{
	_cairn_from="${1}"
	_cairn_to="${1}_swap"
	if [ "${2}" != "ram" ]
	then
		cairn_refuse "todisk is not supported by cairn images"
	fi
	_cairn_src="${_cairn_from}/${LIVE_MEDIA_PATH}"
	_cairn_kb="$(du -sk "${_cairn_src}" | cut -f1)"
	_cairn_free="$(awk '/^MemAvailable:/{print $2}' /proc/meminfo)"
	if [ "${_cairn_free}" -lt "$((_cairn_kb + 65536))" ]
	then
		cairn_say "not enough memory for toram (${_cairn_kb} KiB image, ${_cairn_free} KiB available): reading from the disk"
		cairn_verify "${_cairn_from}"
		return 1
	fi
	cairn_say "copying ${LIVE_MEDIA_PATH} to RAM (${_cairn_kb} KiB)"
	mkdir -p "${_cairn_to}"
	mount -t tmpfs -o "size=$((_cairn_kb + 16384))k" tmpfs "${_cairn_to}"
	mkdir -p "${_cairn_to}/${LIVE_MEDIA_PATH}"
	for _cairn_f in "${_cairn_src}"/*.squashfs "${_cairn_src}"/*.module
	do
		if [ -f "${_cairn_f}" ] && ! cp "${_cairn_f}" "${_cairn_to}/${LIVE_MEDIA_PATH}/"
		then
			cairn_refuse "copying ${_cairn_f} to RAM failed"
		fi
	done
	umount "${_cairn_from}"
	mount -r -o move "${_cairn_to}" "${_cairn_from}"
	rmdir "${_cairn_to}"
	cairn_verify "${_cairn_from}"
	return 0
}
