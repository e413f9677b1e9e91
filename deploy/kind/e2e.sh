#!/usr/bin/env bash
# Sigil end to end on kind, with Istio: the flow of "Istio + SPIRE Integration - Complete Setup
# Guide" (docs/istio.md walks it by hand), with Sigil in place of SPIRE.
#
#   1. build the images (cargo xtask images) and load them into a new kind cluster
#   2. install the Sigil chart with the guide's values file (release `spire`, namespace
#      `spire-server`, trust domain foo.com) and the guide's ClusterSPIFFEIDs
#   3. install Istio with deploy/istio/istio-sigil-csi.yaml (the `spire` injection template, the
#      gateway overlay) and meshConfig.trustDomain set to the chart's trust domain
#   4. deploy the guide's sleep and httpbin into `default` (istio-injection, strict mTLS)
#   5. check: the SPIFFE IDs in the certificates `istioctl proxy-config secret` shows (sleep,
#      httpbin, the ingress gateway), that their ROOTCA is Sigil's bundle (not istiod's CA),
#      X-Forwarded-Client-Cert on sleep -> httpbin, ten requests answered 200, and the
#      registration entries on the server
#   6. delete the cluster (also on failure, after printing what went wrong)
#
# Usage: deploy/kind/e2e.sh [--check] [--no-build] [--keep]      (or: cargo xtask e2e-kind ...)
#   --check     only check the prerequisites; exit 0 if all are there, 3 if not
#   --no-build  use the archives already in target/images/ (from `cargo xtask images`)
#   --keep      leave the cluster running at the end (delete it with `kind delete cluster
#               --name sigil-e2e`)
# Environment: SIGIL_KIND_CLUSTER (the cluster's name, sigil-e2e), SIGIL_KIND_NODE_IMAGE (kind's
# --image), SIGIL_TARGET_DIR (cargo's target directory; `cargo xtask e2e-kind` sets it).
# Needs: docker (with a running daemon), kind, helm, kubectl, istioctl, jq, openssl, and the
# chart in deploy/helm/sigil. kubectl and helm from `cargo xtask setup` (target/tools) are used
# when they are not on PATH.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${SIGIL_TARGET_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}}
PATH=$PATH:$TARGET/tools

CHECK_ONLY=false
BUILD=true
KEEP=false
for arg in "$@"; do
  case $arg in
    --check) CHECK_ONLY=true ;;
    --no-build) BUILD=false ;;
    --keep) KEEP=true ;;
    *)
      echo "usage: $0 [--check] [--no-build] [--keep]" >&2
      exit 2
      ;;
  esac
done

CLUSTER=${SIGIL_KIND_CLUSTER:-sigil-e2e}
# The images' tag is the workspace version, as the chart's appVersion.
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
IMAGES=(sigil-server sigil-agent sigil-controller)
CHART=$ROOT/deploy/helm/sigil
CRDS_CHART=$ROOT/deploy/helm/sigil-crds
# The guide's spire-values-foo-cluster.yaml.
VALUES=$CHART/ci/seed-001-values.yaml
ISTIO_OPERATOR=$ROOT/deploy/istio/istio-sigil-csi.yaml
SAMPLES=$ROOT/deploy/istio/samples
NAMESPACE=spire-server
RELEASE=spire

log() { printf '\n==> %s\n' "$*"; }
fail() {
  printf 'e2e-kind: FAIL: %s\n' "$*" >&2
  exit 1
}

# --- prerequisites -------------------------------------------------------------------------
missing=()
for tool in docker kind helm kubectl istioctl jq openssl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if command -v docker >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  missing+=("a docker daemon (docker info fails)")
fi
[[ -f $CHART/Chart.yaml ]] || missing+=("the chart (deploy/helm/sigil)")
if ((${#missing[@]} > 0)); then
  joined=$(printf '%s, ' "${missing[@]}")
  echo "e2e-kind: missing: ${joined%, }" >&2
  echo "e2e-kind: this needs docker with a running daemon, kind, helm, kubectl, istioctl, jq and openssl" >&2
  exit 3
fi
if $CHECK_ONLY; then
  echo "e2e-kind: prerequisites present (docker, kind, helm, kubectl, istioctl, jq, openssl, the chart)"
  exit 0
fi

# The trust domain of the guide's values file: the chart's and Istio's must be the same.
TRUST_DOMAIN=$(sed -n 's/^[[:space:]]*trustDomain:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' "$VALUES" | head -n 1)
[[ -n $TRUST_DOMAIN ]] || fail "no trustDomain in $VALUES"
echo "e2e-kind: trust domain $TRUST_DOMAIN, images ghcr.io/sigil-id/*:$VERSION, cluster $CLUSTER"

# --- 1. images and cluster -----------------------------------------------------------------
if $BUILD; then
  log "cargo xtask images"
  (cd "$ROOT" && cargo xtask images)
fi
for image in "${IMAGES[@]}"; do
  [[ -f $TARGET/images/$image.oci.tar ]] || fail "$TARGET/images/$image.oci.tar is missing: run \`cargo xtask images\`"
done

# A kubeconfig of its own: the user's current context is never touched.
WORK=$(mktemp -d)
export KUBECONFIG=$WORK/kubeconfig

diagnose() {
  echo "---- diagnostics ----" >&2
  kubectl get pods -A -o wide >&2 || true
  kubectl -n "$NAMESPACE" logs "statefulset/$RELEASE-server" -c spire-server --tail=50 >&2 || true
  kubectl -n "$NAMESPACE" logs "statefulset/$RELEASE-server" -c spire-controller-manager --tail=50 >&2 || true
  kubectl -n "$NAMESPACE" logs "daemonset/$RELEASE-agent" -c spire-agent --tail=80 >&2 || true
  kubectl -n default logs deploy/sleep -c istio-proxy --tail=30 >&2 || true
  kubectl -n default logs deploy/httpbin -c istio-proxy --tail=30 >&2 || true
}
teardown() {
  local status=$?
  if ((status != 0)); then diagnose; fi
  if $KEEP; then
    echo "e2e-kind: cluster $CLUSTER kept (KUBECONFIG=$KUBECONFIG)"
  else
    log "kind delete cluster --name $CLUSTER"
    kind delete cluster --name "$CLUSTER" || true
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap teardown EXIT

log "kind create cluster --name $CLUSTER"
# The chart needs Kubernetes 1.33 or later: kind's default node image, or SIGIL_KIND_NODE_IMAGE.
node_image=()
if [[ -n ${SIGIL_KIND_NODE_IMAGE:-} ]]; then node_image=(--image "$SIGIL_KIND_NODE_IMAGE"); fi
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 120s "${node_image[@]}"

log "kind load image-archive (${IMAGES[*]})"
for image in "${IMAGES[@]}"; do
  kind load image-archive "$TARGET/images/$image.oci.tar" --name "$CLUSTER"
  # containerd names the image from the archive's index.json; the chart asks for this name.
  docker exec "$CLUSTER-control-plane" crictl images |
    grep -Eq "^ghcr\.io/sigil-id/${image}[[:space:]]+${VERSION}[[:space:]]" ||
    fail "ghcr.io/sigil-id/$image:$VERSION is not on the node after kind load"
done

# --- 2. Sigil ------------------------------------------------------------------------------
log "helm install (the guide's values: $VALUES)"
helm install spire-crds "$CRDS_CHART" -n "$NAMESPACE" --create-namespace
helm install "$RELEASE" "$CHART" -n "$NAMESPACE" -f "$VALUES" --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status "statefulset/$RELEASE-server" --timeout=180s
kubectl -n "$NAMESPACE" rollout status "daemonset/$RELEASE-agent" --timeout=180s
kubectl -n "$NAMESPACE" get pods

log "the guide's ClusterSPIFFEIDs"
kubectl apply -f "$SAMPLES/clusterspiffeids.yaml"
kubectl get clusterspiffeid

# --- 3. Istio ------------------------------------------------------------------------------
log "istioctl install ($ISTIO_OPERATOR, meshConfig.trustDomain=$TRUST_DOMAIN)"
istioctl install -y -f "$ISTIO_OPERATOR" --set "meshConfig.trustDomain=$TRUST_DOMAIN"
kubectl -n istio-system rollout status deploy/istiod --timeout=300s
kubectl -n istio-system rollout status deploy/istio-ingressgateway --timeout=300s

# --- 4. workloads --------------------------------------------------------------------------
log "sleep and httpbin in default (istio-injection=enabled, STRICT mTLS)"
kubectl label namespace default istio-injection=enabled --overwrite
kubectl apply -f "$SAMPLES/peer-authentication.yaml"
kubectl apply -f "$SAMPLES/sleep-httpbin.yaml"
kubectl -n default rollout status deploy/sleep --timeout=300s
kubectl -n default rollout status deploy/httpbin --timeout=300s
kubectl -n default wait --for=condition=ready pod -l app=sleep --timeout=120s
kubectl -n default wait --for=condition=ready pod -l app=httpbin --timeout=120s

# --- 5. checks -----------------------------------------------------------------------------
pod_of() { kubectl -n "$1" get pod -l "$2" -o jsonpath='{.items[0].metadata.name}'; }

# The first certificate of SDS `default` as `istioctl proxy-config secret` shows it.
svid_uri() {
  istioctl proxy-config secret "$1" -o json |
    jq -r '.dynamicActiveSecrets[] | select(.name == "default") | .secret.tlsCertificate.certificateChain.inlineBytes' |
    base64 -d | openssl x509 -noout -ext subjectAltName |
    sed -n 's/.*URI:\(spiffe:[^,[:space:]]*\).*/\1/p'
}

# SHA-256 fingerprints of the certificates of SDS `ROOTCA` for our trust domain (Envoy's SPIFFE
# validator config, or a plain trusted_ca).
rootca_fingerprints() {
  istioctl proxy-config secret "$1" -o json |
    jq -r --arg td "$TRUST_DOMAIN" '.dynamicActiveSecrets[] | select(.name == "ROOTCA") | .secret.validationContext
      | ((.customValidatorConfig.typedConfig.trustDomains // [])[] | select(.name == $td) | .trustBundle.inlineBytes),
        (.trustedCa.inlineBytes // empty)' |
    head -n 1 | base64 -d | fingerprints
}
fingerprints() {
  local pem
  pem=$(cat)
  while [[ $pem == *"-----BEGIN CERTIFICATE-----"* ]]; do
    printf '%s\n' "$pem" | openssl x509 -noout -fingerprint -sha256
    pem=${pem#*"-----END CERTIFICATE-----"}
  done | sort
}

log "istioctl proxy-config secret: the SPIFFE IDs"
SLEEP=$(pod_of default app=sleep)
HTTPBIN=$(pod_of default app=httpbin)
GATEWAY=$(pod_of istio-system app=istio-ingressgateway)
istioctl proxy-config secret "$SLEEP.default"
for check in \
  "$SLEEP.default spiffe://$TRUST_DOMAIN/ns/default/sa/sleep" \
  "$HTTPBIN.default spiffe://$TRUST_DOMAIN/ns/default/sa/httpbin" \
  "$GATEWAY.istio-system spiffe://$TRUST_DOMAIN/ns/istio-system/sa/istio-ingressgateway-service-account"; do
  read -r pod want <<<"$check"
  got=$(svid_uri "$pod")
  [[ $got == "$want" ]] || fail "$pod holds $got, expected $want"
  echo "ok: $pod holds $want"
done

log "ROOTCA is Sigil's bundle (sigil-server bundle show), not istiod's CA"
want=$(kubectl -n "$NAMESPACE" exec "$RELEASE-server-0" -c spire-server -- /usr/bin/sigil-server bundle show | fingerprints)
[[ -n $want ]] || fail "sigil-server bundle show printed no certificate"
for pod in "$SLEEP.default" "$HTTPBIN.default" "$GATEWAY.istio-system"; do
  got=$(rootca_fingerprints "$pod")
  [[ $got == "$want" ]] || fail "$pod's ROOTCA is not the server's bundle:"$'\n'"$got"$'\n'"vs"$'\n'"$want"
  echo "ok: $pod trusts the Sigil bundle"
done

log "sleep -> httpbin: X-Forwarded-Client-Cert"
headers=$(kubectl -n default exec "$SLEEP" -c sleep -- curl -sS http://httpbin:8000/headers)
echo "$headers"
xfcc=$(jq -r '.headers["X-Forwarded-Client-Cert"] | if type == "array" then join(",") else . end' <<<"$headers")
[[ $xfcc == *"By=spiffe://$TRUST_DOMAIN/ns/default/sa/httpbin"* ]] || fail "XFCC has no By=spiffe://$TRUST_DOMAIN/ns/default/sa/httpbin: $xfcc"
[[ $xfcc == *"URI=spiffe://$TRUST_DOMAIN/ns/default/sa/sleep"* ]] || fail "XFCC has no URI=spiffe://$TRUST_DOMAIN/ns/default/sa/sleep: $xfcc"
echo "ok: $xfcc"

log "ten requests"
codes=$(for _ in $(seq 10); do
  kubectl -n default exec "$SLEEP" -c sleep -- curl -s -o /dev/null -w '%{http_code}\n' http://httpbin:8000/get
done | sort | uniq -c)
echo "$codes"
[[ $(awk '$2 == 200 { print $1 }' <<<"$codes") == 10 ]] || fail "not every request was answered 200"

log "registration entries (the guide's /opt/spire/bin/spire-server entry show)"
entries=$(kubectl -n "$NAMESPACE" exec "$RELEASE-server-0" -c spire-server -- /opt/spire/bin/spire-server entry show)
for id in ns/default/sa/sleep ns/default/sa/httpbin ns/istio-system/sa/istio-ingressgateway-service-account; do
  grep -q "spiffe://$TRUST_DOMAIN/$id" <<<"$entries" || fail "no entry for spiffe://$TRUST_DOMAIN/$id"
  echo "ok: an entry for spiffe://$TRUST_DOMAIN/$id"
done

log "e2e-kind: PASS"
