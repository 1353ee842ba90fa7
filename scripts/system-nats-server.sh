#!/usr/bin/env bash
# Prints the path of a nats-server on PATH if it is 2.10 or newer (async-nats 0.51 needs
# it); prints nothing otherwise, and the Makefile installs the pinned one into .tools/.
bin=$(command -v nats-server) || exit 0
version=$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p')
read -r major minor <<<"$version"
if [ "${major:-0}" -gt 2 ] || { [ "${major:-0}" -eq 2 ] && [ "${minor:-0}" -ge 10 ]; }; then
  echo "$bin"
fi
