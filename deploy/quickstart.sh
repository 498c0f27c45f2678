#!/usr/bin/env bash
# The README's main command: setup, build, the Spanish demo corpus and tokenizer (built
# once, cached under ./var), then both daemons in the foreground on the demo corpus:
#
#   tb-prefetchd  shard set A (shards 0-3 of the demo corpus), tiny-preset batches
#   tb-trainerd   the tiny preset; daemon.backend auto: the CUDA backend when the build
#                 has it and a GPU is visible (fp32, not tuned yet), else the CPU backend
#   tbctl tail    live step lines (trainerd.step)
#   half way:     `tbctl shards set` swaps to shard set B (shards 4-7), live
#   3/4 of the way: `tbctl --daemon trainerd checkpoint` writes a manual checkpoint
#   the end:      trainerd writes its final checkpoint at TB_STEPS and exits 0; prefetchd
#                 is stopped with `tbctl stop`; `tbctl plot` draws the loss curve (when
#                 this tbctl has it)
#
# Everything of the run is under ./var/quickstart (configs, sockets, ring, prefetchd state,
# checkpoints, CSV, logs); a new run starts from scratch there. Ctrl-C stops both daemons
# cleanly (trainerd checkpoints first).
# Knobs: TB_STEPS (default 100), TB_SEQ (64), TB_BATCH (4), TB_VAR (./var), TB_BUILD (an
# existing build tree to use instead of configuring ./build).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
var=${TB_VAR:-$top/var}
q=$var/quickstart
steps=${TB_STEPS:-100}
seq_len=${TB_SEQ:-64}
batch=${TB_BATCH:-4}
t_start=$(date +%s)
mkdir -p "$var"

echo "== setup"; ./deploy/setup.sh
if [ -n "${TB_BUILD:-}" ]; then   # an existing build tree instead of ./build
  bin=$(cd "$TB_BUILD" && pwd); echo "== build ($bin)"; ninja -C "$bin" >/dev/null
else
  bin=$top/build; echo "== build"; ./deploy/build.sh
fi
for b in prefetchd/tb-prefetchd trainerd/daemon/tb-trainerd tbctl/tbctl; do
  [ -x "$bin/$b" ] || { echo "quickstart: $bin/$b was not built" >&2; exit 1; }
done
pfd=$bin/prefetchd/tb-prefetchd td=$bin/trainerd/daemon/tb-trainerd tbctl=$bin/tbctl/tbctl

echo "== corpus"
if [ ! -f "$var/corpus/stats.json" ]; then
  ./deploy/corpus/build.sh "$var/corpus"
fi
[ -f "$var/corpus/stats.txt" ] && head -2 "$var/corpus/stats.txt"
echo "== tokenizer"
if [ ! -f "$var/tokenizer/spm.model" ]; then
  mkdir -p "$var/tokenizer"
  ./deploy/spm-train.sh --input "$var/corpus" --vocab 8000 --out "$var/tokenizer/spm"
fi

echo "== run directory $q"
rm -rf "$q"
mkdir -p "$q/etc" "$q/run" "$q/state/prefetchd" "$q/cache" "$q/checkpoints" "$q/log"
ls "$var"/corpus/shard-0000[0-3].jsonl.gz > "$q/etc/shards-a.manifest"
ls "$var"/corpus/shard-0000[4-7].jsonl.gz > "$q/etc/shards-b.manifest"
cp "$q/etc/shards-a.manifest" "$q/etc/shards.manifest"
threads=$(nproc)
cat > "$q/etc/prefetchd.yaml" <<EOF
# quickstart: tb-prefetchd (every key: deploy/prefetchd.example.yaml)
endpoints:
  feed: "ipc://$q/run/feed.sock"
  control: "ipc://$q/run/prefetchd.ctl"
  metrics: "ipc://$q/run/prefetchd.pub"
paths:
  ring: $q/run/ring
  state_dir: $q/state/prefetchd
  cache_dir: $q/cache
data:
  manifest: $q/etc/shards.manifest
  tokenizer: $var/tokenizer/spm.model
  seq_len: $seq_len
  batch_size: $batch
workers:
  threads: $threads
ring:
  slots: 16
daemon:
  stop_timeout_ms: 1000
EOF
cat > "$q/etc/trainerd.yaml" <<EOF
# quickstart: tb-trainerd (every key: deploy/trainerd.example.yaml)
training:
  batch_size: $batch
  max_length: $seq_len
  gradient_accumulation_steps: 1
  scheduler_total_steps: $steps
  checkpoint_every_n_steps: 50
  max_rolling_checkpoints: 2
daemon:
  preset: tiny
  feed_endpoint: "ipc://$q/run/feed.sock"
  control_endpoint: "ipc://$q/run/trainerd.ctl"
  metrics_endpoint: "ipc://$q/run/trainerd.pub"
  checkpoint_dir: $q/checkpoints
  csv_path: $q/log/trainerd.csv
  max_steps: $steps
  progress_every: 10
EOF
pctl=(--endpoint "ipc://$q/run/prefetchd.ctl")
tctl=(--daemon trainerd --endpoint "ipc://$q/run/trainerd.ctl")

pfd_pid="" td_pid="" tail_pid=""
cleanup() {
  set +e
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
  if [ -n "$td_pid" ] && kill -0 "$td_pid" 2>/dev/null; then
    echo "quickstart: stopping tb-trainerd (it checkpoints first)"
    kill -TERM "$td_pid"; wait "$td_pid"
  fi
  if [ -n "$pfd_pid" ] && kill -0 "$pfd_pid" 2>/dev/null; then
    echo "quickstart: stopping tb-prefetchd"
    kill -TERM "$pfd_pid"; wait "$pfd_pid"
  fi
}
trap 'cleanup; exit 130' INT TERM
trap cleanup EXIT

status_of() { # status_of CTL-ARGS... KEY: prints the value of KEY in `tbctl status`
  local key=${*: -1}
  { "$tbctl" "${@:1:$#-1}" --timeout 3000 status 2>/dev/null || true; } | awk -v k="$key" '$1 == k {print $2}'
}

echo "== tb-prefetchd (log $q/log/prefetchd.log)"
"$pfd" -c "$q/etc/prefetchd.yaml" > "$q/log/prefetchd.log" 2>&1 &
pfd_pid=$!
for _ in $(seq 100); do
  [ -n "$(status_of "${pctl[@]}" state)" ] && break
  kill -0 "$pfd_pid" 2>/dev/null || { tail "$q/log/prefetchd.log"; exit 1; }
  sleep 0.1
done
echo "tb-prefetchd pid $pfd_pid: generation $(status_of "${pctl[@]}" generation), $(wc -l < "$q/etc/shards-a.manifest") shards, B=$batch T=$seq_len, $threads tokenizer threads"

echo "== tb-trainerd (tiny preset, daemon.backend auto; log $q/log/trainerd.log)"
"$td" -c "$q/etc/trainerd.yaml" > "$q/log/trainerd.log" 2>&1 &
td_pid=$!

echo "== tbctl tail --topic trainerd.step (some of the fields)"
"$tbctl" --endpoint "ipc://$q/run/trainerd.pub" tail --topic trainerd.step > >(
  awk '{ s = ""; for (i = 4; i <= NF; i++) { split($i, kv, "=");
           if (kv[1] ~ /^(global_step|loss|accuracy|learning_rate|grad_norm|tokens_per_s|step_ms)$/)
             s = s " " $i }
         print $1 s; fflush() }') &
tail_pid=$!

swapped=0 ckpt=0
while kill -0 "$td_pid" 2>/dev/null; do
  sleep 0.5
  # global_step of the last CSV row (column 4); the CSV never blocks, a status request
  # would wait for the end of a step.
  g=$(awk -F, 'END { print $4 }' "$q/log/trainerd.csv" 2>/dev/null || true)
  [[ "$g" =~ ^[0-9]+$ ]] || continue
  if [ $swapped -eq 0 ] && [ "$g" -ge $((steps / 2)) ]; then
    echo "== step $g: tbctl shards set $q/etc/shards-b.manifest (live swap to shard set B)"
    "$tbctl" "${pctl[@]}" shards set "$q/etc/shards-b.manifest" | sed 's/^/   /'
    swapped=1
  fi
  if [ $ckpt -eq 0 ] && [ "$g" -ge $((steps * 3 / 4)) ]; then
    echo "== step $g: tbctl --daemon trainerd checkpoint"
    "$tbctl" "${tctl[@]}" --timeout 60000 checkpoint | sed 's/^/   /'
    ckpt=1
  fi
done
set +e
wait "$td_pid"; td_rc=$?
set -e
td_pid=""
sleep 0.3
kill "$tail_pid" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
tail_pid=""
echo "== tb-trainerd exited with status $td_rc after $steps steps"
grep -E 'step [0-9]+/|checkpoint' "$q/log/trainerd.log" | tail -4 | sed 's/^/   /' || true
echo "== tbctl stop (tb-prefetchd)"
"$tbctl" "${pctl[@]}" stop >/dev/null || kill -TERM "$pfd_pid"
set +e
wait "$pfd_pid"; pfd_rc=$?
set -e
pfd_pid=""
echo "tb-prefetchd exited with status $pfd_rc"

echo "== loss plot"
if "$tbctl" --help 2>&1 | grep -qw plot; then
  if "$tbctl" plot "$q/log/trainerd.csv" -o "$q/log/loss.png"; then
    echo "loss plot: $q/log/loss.png"
  else
    echo "quickstart: tbctl plot failed (it needs gnuplot); the loss is in $q/log/trainerd.csv"
  fi
else
  echo "quickstart: this tbctl has no 'plot' command yet; the loss is in $q/log/trainerd.csv"
fi

echo "== where everything is"
cat <<EOF
  loss plot      $q/log/loss.png
  configs        $q/etc/prefetchd.yaml, $q/etc/trainerd.yaml
  shard sets     $q/etc/shards-a.manifest (steps 0-$((steps / 2))), $q/etc/shards-b.manifest (after)
  checkpoints    $q/checkpoints/ ($(ls "$q/checkpoints" | grep -c '^ckpt-') directories; newest $(ls "$q/checkpoints" | grep '^ckpt-' | sort | tail -1))
  step CSV       $q/log/trainerd.csv ($(($(wc -l < "$q/log/trainerd.csv") - 1)) rows)
  daemon logs    $q/log/prefetchd.log, $q/log/trainerd.log
  prefetchd      $q/state/prefetchd (manifest generations, swap points), ring $q/run/ring
  corpus         $var/corpus, tokenizer $var/tokenizer/spm.model
EOF
echo "quickstart: done in $(( $(date +%s) - t_start )) s"
[ "$td_rc" -eq 0 ] && [ "$pfd_rc" -eq 0 ]
