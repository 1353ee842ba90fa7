#!/usr/bin/env bash
# Prints the path of a nats-server on PATH if it is 2.12 or newer (the revalidator's
# retries are JetStream message schedules); prints nothing otherwise, and the Makefile
# installs the pinned one into .tools/.
bin=$(command -v nats-server) || exit 0
version=$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p')
read -r major minor <<<"$version"
if [ "${major:-0}" -gt 2 ] || { [ "${major:-0}" -eq 2 ] && [ "${minor:-0}" -ge 12 ]; }; then
  echo "$bin"
fi
