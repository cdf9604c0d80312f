#!/usr/bin/env bash
# Verifies the systemd units in deploy/ with `systemd-analyze verify`
# (installs the systemd package's tools if missing; idempotent). Works without
# systemd as PID 1.
#
# verify checks that every Exec*= binary exists, so the units are checked as
# a temporary copy whose /usr/local/bin/ paths point at this workspace's
# freshly built binaries, instantiated for the statefile volume. drbdsetup is
# used where installed (drbd-utils); otherwise /bin/true stands in for it and
# this script says so.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd
fi

cargo build --quiet -p http-disk-server -p nbd-http-server --bins
bindir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug"
for b in http-disk-server nbd-http-server; do
  [ -x "$bindir/$b" ] || { echo "missing $bindir/$b after build" >&2; exit 1; }
done

drbdsetup=/usr/sbin/drbdsetup
if [ ! -x "$drbdsetup" ]; then
  echo "note: $drbdsetup not installed (drbd-utils); /bin/true stands in for it" >&2
  drbdsetup=/bin/true
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
instance=xcp-persistent-ha-statefile
for unit in deploy/*@.service; do
  name="$(basename "$unit" .service)"   # e.g. http-disk-server@
  sed -e "s#/usr/local/bin/#$bindir/#g" -e "s#/usr/sbin/drbdsetup#$drbdsetup#g" \
    "$unit" > "$tmp/${name}${instance}.service"
done

status=0
for unit in "$tmp"/*.service; do
  # verify prints problems on stderr and returns non-zero on errors; warnings
  # about the missing EnvironmentFile or network-online.target are not errors.
  if ! out="$(systemd-analyze verify --man=no "$unit" 2>&1)"; then
    status=1
  fi
  # Any complaint about our own unit file is a failure, even a warning.
  if grep -qF "$(basename "$unit")" <<<"$out"; then
    status=1
  fi
  printf '%s: %s\n' "$(basename "$unit")" "${out:-ok}"
done

# verify does not know the daemons' flags: every --flag in an ExecStart= must
# appear in that binary's own --help.
for unit in deploy/*@.service; do
  line="$(grep '^ExecStart=' "$unit")"
  bin="$(basename "$(printf '%s' "${line#ExecStart=}" | cut -d' ' -f1)")"
  help="$("$bindir/$bin" --help)"
  for flag in $(printf '%s\n' "$line" | grep -o -- '--[a-z][a-z-]*' | sort -u); do
    # A here-string, not a pipe: grep -q stops at the first match, and under
    # pipefail the writer's SIGPIPE would count as "not listed".
    if ! grep -q -- "$flag\b" <<<"$help"; then
      echo "$(basename "$unit"): $bin --help does not list $flag" >&2
      status=1
    fi
  done
  echo "$(basename "$unit"): ExecStart flags known to $bin --help"
done
exit $status
