#!/usr/bin/env bash
# Installs schemathesis (PyPI, pinned) into the git-ignored .tools folder for the contract
# test (integration-tests/tests/it/contract.rs); does nothing when it is already there.
#   .tools/contract-venv   schemathesis and its dependencies
# Usage: install-contract-tools.sh TOOLS_DIR
set -euo pipefail

TOOLS=${1:?usage: install-contract-tools.sh TOOLS_DIR}
PIP_PACKAGES=(schemathesis==4.32.5)

venv="$TOOLS/contract-venv"
stamp="$venv/.installed"
want="${PIP_PACKAGES[*]}"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/schemathesis" ]]; then
  exit 0
fi

echo "installing the contract-test tools into $TOOLS"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
"$venv/bin/schemathesis" --version
echo "$want" > "$stamp"
