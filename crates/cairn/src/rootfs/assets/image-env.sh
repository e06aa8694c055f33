#!/bin/sh
# cairn: which image booted, for scripts and cairn-booted: /run/cairn/image.env
# (CAIRN_PROFILE, CAIRN_VERSION), read from the signed kernel command line
# (cairn.image=PROFILE/VERSION). The image does not carry its own name: the
# same inputs make the same bytes, whatever version name a build gets.
image=""
for p in $(cat /proc/cmdline); do
    case "$p" in
        cairn.image=*) image="${p#cairn.image=}" ;;
    esac
done
profile="${image%%/*}"
version="${image#*/}"
# Names as cairn makes them, nothing a shell reading the file would run.
name() { printf '%s\n' "$1" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9._+-]*'; }
if [ "$profile/$version" != "$image" ] || ! name "$profile" || ! name "$version"; then
    profile=unknown
    version=unknown
fi
mkdir -p /run/cairn
printf 'CAIRN_PROFILE=%s\nCAIRN_VERSION=%s\n' "$profile" "$version" > /run/cairn/image.env.new
mv /run/cairn/image.env.new /run/cairn/image.env
