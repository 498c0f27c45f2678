#!/usr/bin/env bash
# systemd_units_verify_clean / systemd_units_security_under_2_5:
# installs the build into a temporary DESTDIR (cmake --install --prefix /usr), points the
# installed units' /usr/bin paths at the installed binaries in a temporary copy, then
#   verify:   `systemd-analyze verify` on every unit (the template as tb-trainerd@0)
#             must print nothing at all and exit 0 (it exits 0 on unknown keys, so any
#             printed line fails); a deliberately broken copy must print something
#             (proves the check can fail);
#   security: `systemd-analyze security --offline=yes --threshold=25` (exposure 2.5 or
#             better) for tb-prefetchd, tb-trainerd and tb-trainerd@0.
# Exit 77 (ctest SKIP_RETURN_CODE) when systemd-analyze is missing.
# usage: verify_units.sh verify|security SOURCE_DIR BINARY_DIR
set -uo pipefail
mode=$1 src=$2 bin=$3
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze not installed (apt-get install systemd)"; exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tb-units.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
if ! DESTDIR=$root cmake --install "$bin" --prefix /usr >"$tmp/install.log" 2>&1; then
  cat "$tmp/install.log"; echo "FAIL: cmake --install into DESTDIR failed"; exit 1
fi
units=$root/usr/lib/systemd/system
fail=0
for f in tb-prefetchd.service tb-trainerd.service tb-trainerd@.service tb.target; do
  [ -f "$units/$f" ] || { echo "FAIL: $f not installed to /usr/lib/systemd/system"; fail=1; }
done
for f in usr/bin/tb-prefetchd usr/bin/tb-trainerd usr/bin/tbctl usr/lib/tmpfiles.d/tb.conf \
         usr/lib/sysusers.d/tb.conf etc/tb/prefetchd.yaml etc/tb/trainerd.yaml; do
  [ -e "$root/$f" ] || { echo "FAIL: /$f not installed"; fail=1; }
done
[ $fail -eq 0 ] || exit 1
# The temp copy: every /usr/bin/X in the units -> the installed $root/usr/bin/X.
mkdir -p "$tmp/u"
for f in "$units"/*.service "$units"/*.target; do
  sed "s#/usr/bin/#$root/usr/bin/#g" "$f" > "$tmp/u/$(basename "$f")"
done
names=(tb-prefetchd.service tb-trainerd.service tb-trainerd@0.service tb-trainerd@3.service tb.target)

verify_one() { # prints what systemd-analyze printed; returns its status
  (cd "$tmp/u" && systemd-analyze verify "$tmp/u/$1" 2>&1)
}

case "$mode" in
verify)
  for n in "${names[@]}"; do
    out=$(verify_one "$n"); rc=$?
    if [ $rc -ne 0 ] || [ -n "$out" ]; then
      echo "FAIL: systemd-analyze verify $n (exit $rc) printed:"; echo "$out"; fail=1
    else
      echo "ok: verify $n: exit 0, no output"
    fi
  done
  # The check must be able to fail: an unknown key and a missing binary are reported.
  sed 's/^\[Service\]$/[Service]\nNoSuchKey=1/' "$tmp/u/tb-prefetchd.service" > "$tmp/u/tb-broken.service"
  out=$(verify_one tb-broken.service)
  if [ -z "$out" ]; then echo "FAIL: an unknown key went unnoticed by the check"; fail=1
  else echo "ok: an unknown key is reported: $(echo "$out" | head -1)"; fi
  sed "s#$root/usr/bin/tb-prefetchd#$root/usr/bin/tb-missing#" "$tmp/u/tb-prefetchd.service" > "$tmp/u/tb-broken.service"
  out=$(verify_one tb-broken.service)
  if [ -z "$out" ]; then echo "FAIL: a missing ExecStart binary went unnoticed"; fail=1
  else echo "ok: a missing binary is reported: $(echo "$out" | head -1)"; fi
  rm -f "$tmp/u/tb-broken.service"
  # sysusers.d and tmpfiles.d apply cleanly to the temporary root (user first: the
  # tmpfiles entry names it).
  if command -v systemd-sysusers >/dev/null; then
    out=$(systemd-sysusers --root="$root" "$root/usr/lib/sysusers.d/tb.conf" 2>&1); rc=$?
    if [ $rc -ne 0 ] || echo "$out" | grep -qiE 'fail|invalid|unknown|error|ignoring' ||
       ! grep -q '^tb:' "$root/etc/passwd"; then
      echo "FAIL: systemd-sysusers (exit $rc): $out"; fail=1
    else echo "ok: sysusers.d parses: $(echo "$out" | tr '\n' ' ')"; fi
  fi
  if command -v systemd-tmpfiles >/dev/null; then
    out=$(systemd-tmpfiles --root="$root" --create "$root/usr/lib/tmpfiles.d/tb.conf" 2>&1); rc=$?
    if [ $rc -ne 0 ] || [ -n "$out" ] || [ ! -d "$root/run/tb" ]; then
      echo "FAIL: systemd-tmpfiles --create (exit $rc): $out"; fail=1
    else echo "ok: tmpfiles.d creates /run/tb (mode $(stat -c %a "$root/run/tb"))"; fi
  fi
  ;;
security)
  for n in tb-prefetchd.service tb-trainerd.service tb-trainerd@0.service; do
    out=$(cd "$tmp/u" && systemd-analyze security --offline=yes --threshold=25 "$tmp/u/$n" 2>&1); rc=$?
    level=$(echo "$out" | grep -o 'Overall exposure level for [^:]*: [0-9.]*' | tail -1)
    if [ $rc -ne 0 ] || [ -z "$level" ]; then
      echo "FAIL: systemd-analyze security --threshold=25 $n (exit $rc): ${level:-no level}"
      echo "$out" | grep '✗' | head -20; fail=1
    else
      echo "ok: $level (threshold 2.5)"
    fi
  done
  ;;
*) echo "usage: $0 verify|security SRC BIN"; exit 64 ;;
esac
[ $fail -eq 0 ] && echo "PASS" || echo "FAIL"
exit $fail
