#!/usr/bin/env bash
# Builds tb's Spanish demo corpus from Debian documentation packages (and nothing else):
#   installed:  manpages-es manpages-es-dev debian-reference-es maint-guide-es gimp-help-es
#               aptitude-doc-es freedombox-doc-es
#   unpacked:   libreoffice-help-es lilypond-doc-html-es (apt-get download + dpkg-deb -x
#               into CACHE/root/<pkg>; not installed)
# Output in OUTDIR (default <repo>/var/corpus):
#   shard-0000{0..7}.jsonl.gz   RedPajama-V2 shaped: raw_content, doc_id ("source:path"),
#                               meta {source, path}; 8 shards of similar size
#   shard-0000{0..7}.jsonl.zst  same documents, field `text`
#   stats.json, stats.txt       documents, bytes per source, dropped counts by reason
# Cleaning rules: deploy/corpus/corpus.py (docstring). Same inputs give the same bytes;
# work is skipped when OUTDIR/build.stamp matches the inputs (package versions, scripts).
# CACHE: $TB_CORPUS_CACHE, default <repo>/var/corpus-cache (debs, unpacked trees, text).
# usage: deploy/corpus/build.sh [OUTDIR]      (root, or sudo, for apt-get install)
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/var/corpus}
cache=${TB_CORPUS_CACHE:-$repo/var/corpus-cache}
installed=(manpages-es manpages-es-dev debian-reference-es maint-guide-es gimp-help-es
           aptitude-doc-es freedombox-doc-es)
unpacked=(libreoffice-help-es lilypond-doc-html-es)
# lynx renders the HTML; it also satisfies gimp-help-es's "gimp-helpbrowser | www-browser"
# so apt does not pull in GIMP.
tools=(lynx man-db groff-base zstd python3)
t0=$(date +%s.%N)

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
for p in "${tools[@]}" "${installed[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "corpus: installing ${missing[*]}" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2 || {
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >&2; }
fi

mkdir -p "$cache/debs" "$cache/root" "$out"
specs=()
versions=""
for p in "${installed[@]}"; do
  specs+=("$p=/")
  versions+="$p $(dpkg-query -W -f='${Version}' "$p")"$'\n'
done
for p in "${unpacked[@]}"; do
  ver=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then echo "corpus: no candidate for $p" >&2; exit 69; fi
  # apt-get download names files with the version's ':' escaped as %3a.
  deb=$(find "$cache/debs" -maxdepth 1 -name "${p}_${ver//:/%3a}_*.deb" | sort | head -1)
  if [ -z "$deb" ]; then
    (cd "$cache/debs" && apt-get download "$p=$ver" >&2) || {
      $SUDO apt-get update -qq; (cd "$cache/debs" && apt-get download "$p=$ver" >&2); }
    deb=$(find "$cache/debs" -maxdepth 1 -name "${p}_${ver//:/%3a}_*.deb" | sort | head -1)
  fi
  [ -n "$deb" ] || { echo "corpus: download of $p $ver failed" >&2; exit 69; }
  if [ "$(cat "$cache/root/$p.stamp" 2>/dev/null)" != "$(basename "$deb")" ]; then
    rm -rf "$cache/root/$p"
    dpkg-deb -x "$deb" "$cache/root/$p"
    basename "$deb" > "$cache/root/$p.stamp"
  fi
  specs+=("$p=$cache/root/$p")
  versions+="$p $ver"$'\n'
done

key=$( { cat "$here/build.sh" "$here/corpus.py"; printf '%s' "$versions"; } | sha256sum | cut -c1-64)
done_ok=1
for i in 0 1 2 3 4 5 6 7; do
  [ -f "$out/shard-0000$i.jsonl.gz" ] && [ -f "$out/shard-0000$i.jsonl.zst" ] || done_ok=0
done
if [ $done_ok -eq 1 ] && [ -f "$out/stats.json" ] &&
   [ "$(cat "$out/build.stamp" 2>/dev/null)" = "$key" ]; then
  echo "corpus: up to date in $out" >&2
  exit 0
fi
rm -f "$out/build.stamp"
python3 "$here/corpus.py" build "$out" "$cache" "${specs[@]}"
echo "$key" > "$out/build.stamp"
printf 'corpus: done in %s (%.0f s)\n' "$out" "$(echo "$(date +%s.%N) - $t0" | bc)" >&2
