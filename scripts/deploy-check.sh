#!/usr/bin/env bash
# `make deploy-check`: renders every kustomization under deploy/ with kubectl's kustomize,
# validates the result with kubernetes-validate --strict for each supported Kubernetes
# version, checks the dev NATS configuration with nats-server, and lints deploy/ (yamllint)
# and the Dockerfile (hadolint). The tools come from scripts/install-deploy-tools.sh.
# Environment: TOOLS (the .tools folder), K8S_VERSIONS (space-separated, e.g. "1.30.0 1.31.0"),
# NATS_SERVER_BIN (optional).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${TOOLS:-$PWD/.tools}
: "${K8S_VERSIONS:?K8S_VERSIONS must list the Kubernetes versions to validate against}"
KUBECTL="$TOOLS/bin/kubectl"
VENV="$TOOLS/deploy-venv/bin"
OUT=target/deploy-check
rm -rf "$OUT"
mkdir -p "$OUT"

fail() { echo "deploy-check: $*" >&2; exit 1; }

# 1. Render. Each kustomization becomes one file (kept in target/deploy-check to look at).
rendered=()
for dir in deploy/k8s/overlays/* deploy/otel; do
  name=$(echo "${dir#deploy/}" | tr / -)
  "$KUBECTL" kustomize "$dir" > "$OUT/$name.yaml" || fail "kubectl kustomize $dir failed"
  rendered+=("$OUT/$name.yaml")
  echo "rendered $dir -> $OUT/$name.yaml ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
done

# 2. Validate against the Kubernetes API schemas, rejecting unknown fields (--strict).
# Plain manifests outside the kustomizations are validated as they are. HTTPRoute
# (deploy/edge/httproute.yaml) is a CRD, which kubernetes-validate has no schema for:
# it is linted below and checked against the services by the drift test.
plain=(deploy/k8s/base/secret.example.yaml deploy/edge/ingress-nginx.yaml)
for version in $K8S_VERSIONS; do
  log="$OUT/validate-$version.log"
  if ! "$VENV/kubernetes-validate" --strict --quiet --kubernetes-version "$version" \
      "${rendered[@]}" "${plain[@]}" > "$log" 2>&1; then
    cat "$log" >&2
    fail "kubernetes-validate --strict failed for Kubernetes $version"
  fi
  # Every kind must be known: a warning means something was not validated at all.
  if [[ -s "$log" ]]; then
    cat "$log" >&2
    fail "kubernetes-validate could not validate everything for Kubernetes $version"
  fi
  echo "kubernetes-validate --strict: Kubernetes $version ok"
done

# 3. The dev overlay's NATS configuration parses (the production one is the chart's).
nats=${NATS_SERVER_BIN:-$(command -v nats-server || true)}
if [[ -n "$nats" && -x "$nats" ]]; then
  "$VENV/python" - "$OUT/k8s-overlays-dev.yaml" "$OUT/nats-dev.conf" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")]
if len(cm) != 1:
    sys.exit("deploy-check: the dev overlay must have exactly one nats-config ConfigMap")
open(sys.argv[2], "w").write(cm[0]["data"]["nats.conf"])
PY
  POD_NAME=nats-0 "$nats" -c "$OUT/nats-dev.conf" -t || fail "the dev overlay's nats.conf is invalid"
else
  echo "deploy-check: no nats-server: the dev NATS configuration was not checked" >&2
fi

# 4. Lint.
"$VENV/yamllint" --strict -c .yamllint deploy/ || fail "yamllint found problems in deploy/"
echo "yamllint deploy/: ok"
"$VENV/hadolint" Dockerfile || fail "hadolint found problems in the Dockerfile"
echo "hadolint Dockerfile: ok"
echo "deploy-check: ok"
