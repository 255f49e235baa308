# Sourced by the scripts that install what they need on demand (deploy/local/stack.sh,
# tests/api/schemathesis.sh, tests/deploy/validate.sh, fuzz/run.sh): two of them at once never
# break each other — each install runs under a lock and checks again once it holds it — and a
# failed step says which one failed.
#
# The caller defines `say` and `die` (messages with its own prefix).

# with_lock FILE WHAT COMMAND...: runs COMMAND holding an exclusive flock on FILE, waiting (up to
# 30 minutes, saying so) while another process holds it. The lock is taken on a descriptor of a
# subshell, so nothing started later (the broker, Redis) inherits it.
with_lock() {
  local file=$1 what=$2
  shift 2
  command -v flock >/dev/null || die "flock (util-linux) is needed to install safely"
  mkdir -p "$(dirname "$file")"
  (
    exec 8>"$file"
    if ! flock -n 8; then
      say "waiting for another install of $what to finish (lock $file)"
      flock -w 1800 8 || die "another install of $what held $file for 30 minutes"
    fi
    "$@"
  )
}

# python_venv DIR PACKAGES...: a virtual environment at DIR with PACKAGES, made once. A venv
# counts as made only once its packages installed (DIR/.installed); a half-made one (a failed or
# interrupted pip) is made again.
python_venv() {
  local dir=$1
  shift
  [ -f "$dir/.installed" ] && return 0
  with_lock "$dir.lock" "$dir" make_python_venv "$dir" "$@"
}

make_python_venv() { # DIR PACKAGES...
  local dir=$1
  shift
  [ -f "$dir/.installed" ] && return 0
  say "installing $* into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir" || die "installing into $dir: python3 -m venv failed"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@" \
    || die "installing into $dir: pip install $* failed"
  touch "$dir/.installed"
}
