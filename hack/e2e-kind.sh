#!/usr/bin/env bash
# =====================================================================================================
#  END-TO-END TEST ON A REAL CLUSTER — RUN BY USERS, NOT BY CI HERE.
#  It needs Docker, kind, kubectl and istioctl, and the internet (kind node image, Istio images, the
#  Prometheus addon). The machines this project is developed and tested on have no Docker engine and no
#  cluster, so this script has never been run there; see docs/kubernetes.md for what was verified.
# =====================================================================================================
#
# What it does, in a throw-away kind cluster:
#   1. installs Istio (default profile: istiod + ingress gateway; every proxy keeps its in-flight gauges)
#      and Istio's Prometheus addon;
#   2. builds the controller image and the reference search stack image (v1, v2 and v4 healthy, and a
#      broken v3 whose responses fail 50% of the time), and loads them into the cluster;
#   3. installs manifests/overlays/kind (CRD, RBAC, controller, search stack v1) and istio/, then runs
#      the stack with 3 replicas per service and an HPA on ml-infer (3 to 6 replicas);
#   4. starts steady load through the mesh (a pod calling master-search);
#   5. releases v2 of the whole stack and expects Succeeded, with every DestinationRule's stable subset
#      re-pointed at v2 and the HPA following ml-infer to v2;
#   6. releases v4 of ml-infer right after (v2 -> v4), then undoes it with a release back to v2: both
#      Succeeded, the stable subset and the HPA on the serving version each time, v4 scaled to 0;
#   7. releases v3 of ml-infer only and expects RolledBack, with all traffic on v2 and no v3 pods left;
#   8. deletes the cluster (KEEP_CLUSTER=1 keeps it for a look around).
#
# Usage: hack/e2e-kind.sh            environment: ISTIO_DIR (an unpacked Istio release, for its
#                                    samples/addons/prometheus.yaml), CLUSTER, KEEP_CLUSTER, RELEASE_TIMEOUT
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${CLUSTER:-stack-canary-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
RELEASE_TIMEOUT="${RELEASE_TIMEOUT:-900}"   # seconds a release may take to reach a final phase
NS=search
SERVICES=(master-search ml-infer ml-search keyword text-search)
SEARCH_IMAGE=stack-canary-searchstack
CONTROLLER_IMAGE=stack-canary-controller:dev

log() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; dump_state; exit 1; }

need() {
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null || { echo "missing: $cmd" >&2; exit 2; }
  done
}

cleanup() {
  if [[ "$KEEP_CLUSTER" == 1 ]]; then
    echo "cluster kept: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}

dump_state() {
  kubectl get stackreleases -A -o wide || true
  kubectl -n "$NS" get deployments,pods -L version || true
  kubectl -n "$NS" get virtualservices,destinationrules -o yaml || true
  kubectl -n stack-canary-system logs deployment/stack-canary --tail=200 || true
}

create_cluster() {
  log "kind cluster $CLUSTER"
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
  kubectl config use-context "kind-$CLUSTER"
}

install_istio() {
  log "Istio and its Prometheus addon"
  # Every proxy, the ingress gateway included, keeps its upstream_rq_active gauges: the requests in flight per
  # subset that a promotion's or rollback's drain waits for (docs/kubernetes.md, "Draining on a cluster").
  istioctl install -y --set profile=default \
    --set 'meshConfig.defaultConfig.proxyStatsMatcher.inclusionSuffixes[0]=upstream_rq_active'
  local addon
  if [[ -n "${ISTIO_DIR:-}" ]]; then
    addon="$ISTIO_DIR/samples/addons/prometheus.yaml"
  else
    # The addon of the installed Istio's minor release.
    local minor
    minor="$(istioctl version --remote=false | grep -oE '[0-9]+\.[0-9]+' | head -n 1)"
    addon="https://raw.githubusercontent.com/istio/istio/release-${minor}/samples/addons/prometheus.yaml"
  fi
  kubectl apply -f "$addon"
  kubectl -n istio-system rollout status deployment/prometheus --timeout=300s
}

build_images() {
  log "images"
  docker build -t "$CONTROLLER_IMAGE" "$ROOT"
  docker build -f "$ROOT/searchstack.Dockerfile" -t "$SEARCH_IMAGE:v1" "$ROOT"
  docker tag "$SEARCH_IMAGE:v1" "$SEARCH_IMAGE:v2"
  docker tag "$SEARCH_IMAGE:v1" "$SEARCH_IMAGE:v4"
  docker build -f "$ROOT/searchstack.Dockerfile" --build-arg FAULT_ERROR_RATE=0.5 -t "$SEARCH_IMAGE:v3" "$ROOT"
  for image in "$CONTROLLER_IMAGE" "$SEARCH_IMAGE:v1" "$SEARCH_IMAGE:v2" "$SEARCH_IMAGE:v3" "$SEARCH_IMAGE:v4"; do
    kind load docker-image --name "$CLUSTER" "$image"
  done
}

install_stack() {
  log "CRD, RBAC, controller, search stack v1, Istio routing"
  kubectl apply --server-side -k "$ROOT/manifests/overlays/kind"
  kubectl wait --for=condition=Established crd/stackreleases.stackcanary.dev --timeout=60s
  kubectl apply --server-side -k "$ROOT/istio"
  kubectl -n stack-canary-system rollout status deployment/stack-canary --timeout=300s
  for svc in "${SERVICES[@]}"; do
    kubectl -n "$NS" rollout status "deployment/$svc-v1" --timeout=300s
  done
}

scale_stack() {
  log "3 replicas per service, an HPA on ml-infer (3 to 6 replicas)"
  for svc in "${SERVICES[@]}"; do
    kubectl -n "$NS" scale "deployment/$svc-v1" --replicas=3
  done
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: ml-infer
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: ml-infer-v1}
  minReplicas: 3
  maxReplicas: 6
  metrics:
    - type: Resource
      resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}
EOF
  for svc in "${SERVICES[@]}"; do
    kubectl -n "$NS" rollout status "deployment/$svc-v1" --timeout=300s
  done
}

hpa_target() {
  kubectl -n "$NS" get hpa ml-infer -o jsonpath='{.spec.scaleTargetRef.name}'
}

replicas_of() {  # replicas_of DEPLOYMENT -> spec.replicas
  kubectl -n "$NS" get deployment "$1" -o jsonpath='{.spec.replicas}'
}

start_load() {
  log "steady load through the mesh (about 20 searches/s)"
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: loadgen
spec:
  replicas: 1
  selector:
    matchLabels: {app: loadgen}
  template:
    metadata:
      labels: {app: loadgen}
    spec:
      containers:
        - name: loadgen
          image: $SEARCH_IMAGE:v1
          imagePullPolicy: Never
          command: ["python", "-c"]
          args:
            - |
              import time, httpx
              with httpx.Client(timeout=5) as client:
                  i = 0
                  while True:
                      i += 1
                      try:
                          client.post("http://master-search:8000/master-service/search",
                                      json={"text": f"query {i % 500}", "n_results": 10, "random_seed": i})
                      except httpx.HTTPError:
                          pass
                      time.sleep(0.05)
EOF
  kubectl -n "$NS" rollout status deployment/loadgen --timeout=300s
}

release() {  # release NAME STABLE CANARY IMAGES_YAML
  local name="$1" stable="$2" canary="$3" images="$4"
  kubectl -n "$NS" apply -f - <<EOF
apiVersion: stackcanary.dev/v1alpha1
kind: StackRelease
metadata:
  name: $name
spec:
  stable: {version: $stable}
  canary:
    version: $canary
    images: $images
  strategy:
    canary:
      steps: [{weight: 20}, {weight: 50}]
      interval: 60s
      settle: 20s            # more than the addon's 15s scrape interval
      minCanaryRequests: 100
      stepDeadline: 10m
  analysis: {judge: sequential, alpha: 0.05, minCanaryRequests: 100}
  policies: {onInconclusive: continue, rollbackAfterErrors: 3}
  progressDeadline: 5m
EOF
}

wait_final() {  # wait_final NAME -> prints the final phase
  local name="$1" phase="" deadline=$((SECONDS + RELEASE_TIMEOUT))
  while ((SECONDS < deadline)); do
    phase="$(kubectl -n "$NS" get stackrelease "$name" -o jsonpath='{.status.phase}')"
    case "$phase" in Succeeded | RolledBack | Failed | Aborted) echo "$phase"; return 0 ;; esac
    kubectl -n "$NS" get stackrelease "$name" --no-headers >&2
    sleep 15
  done
  echo "Timeout($phase)"
}

stable_subset() {  # stable_subset SERVICE -> version the stable subset points at
  kubectl -n "$NS" get destinationrule "$1" -o jsonpath='{.spec.subsets[?(@.name=="stable")].labels.version}'
}

canary_weight() {
  kubectl -n "$NS" get virtualservice master-search \
    -o jsonpath='{.spec.http[?(@.name=="release-split")].route[1].weight}'
}

healthy_release() {
  log "release v2 of the whole stack: expect Succeeded"
  local images="{master-search: $SEARCH_IMAGE:v2, ml-infer: $SEARCH_IMAGE:v2, ml-search: $SEARCH_IMAGE:v2,"
  images+=" keyword: $SEARCH_IMAGE:v2, text-search: $SEARCH_IMAGE:v2}"
  release search-v2 v1 v2 "$images"
  local phase
  phase="$(wait_final search-v2)"
  [[ "$phase" == Succeeded ]] || fail "search-v2 ended $phase, expected Succeeded"
  for svc in "${SERVICES[@]}"; do
    [[ "$(stable_subset "$svc")" == v2 ]] || fail "$svc: stable subset is not v2 after promotion"
  done
  [[ "$(canary_weight)" == 0 ]] || fail "canary weight is not 0 after promotion"
  [[ "$(hpa_target)" == ml-infer-v2 ]] || fail "the HPA targets $(hpa_target), not ml-infer-v2"
  echo "ok: promoted; every stable subset is v2; the HPA follows ml-infer to v2"
}

one_service_release() {  # one_service_release NAME STABLE CANARY: a healthy release of ml-infer alone
  local name="$1" stable="$2" canary="$3" phase
  release "$name" "$stable" "$canary" "{ml-infer: $SEARCH_IMAGE:$canary}"
  phase="$(wait_final "$name")"
  [[ "$phase" == Succeeded ]] || fail "$name ended $phase, expected Succeeded"
  [[ "$(stable_subset ml-infer)" == "$canary" ]] || fail "ml-infer: stable subset is not $canary after $name"
  [[ "$(hpa_target)" == "ml-infer-$canary" ]] || fail "after $name the HPA targets $(hpa_target)"
  (("$(replicas_of "ml-infer-$canary")" >= 3)) || fail "ml-infer-$canary has fewer replicas than the stable had"
  echo "ok: $name promoted $canary of ml-infer; the HPA follows it"
}

releases_in_a_row_then_undo() {
  log "v2 -> v4 of ml-infer, then an undo back to v2: expect Succeeded twice"
  one_service_release infer-v4 v2 v4
  one_service_release infer-undo v4 v2
  local deadline=$((SECONDS + 300))   # scaleDownDelay, then the scale-down
  while (("$(replicas_of ml-infer-v4)" > 0 && SECONDS < deadline)); do sleep 5; done
  [[ "$(replicas_of ml-infer-v4)" == 0 ]] || fail "ml-infer-v4 is not scaled to 0 after the undo"
  echo "ok: released and undone; v4 scaled to 0"
}

failing_release() {
  log "release v3 of ml-infer (50% errors): expect RolledBack"
  release search-v3 v2 v3 "{ml-infer: $SEARCH_IMAGE:v3}"
  local phase
  phase="$(wait_final search-v3)"
  [[ "$phase" == RolledBack ]] || fail "search-v3 ended $phase, expected RolledBack"
  [[ "$(stable_subset ml-infer)" == v2 ]] || fail "ml-infer: stable subset moved off v2"
  [[ "$(canary_weight)" == 0 ]] || fail "canary weight is not 0 after rollback"
  local left deadline=$((SECONDS + 120))   # terminating pods need their grace period
  while left="$(kubectl -n "$NS" get pods -l version=v3 --no-headers 2>/dev/null | wc -l)" \
      && ((left > 0 && SECONDS < deadline)); do
    sleep 5
  done
  [[ "$left" == 0 ]] || fail "$left v3 pods are still running after rollback"
  kubectl -n "$NS" get events --field-selector involvedObject.name=search-v3 | grep -q RolledBack \
    || fail "no RolledBack event on search-v3"
  echo "ok: rolled back; all traffic on v2; no v3 pods"
}

main() {
  need docker kind kubectl istioctl
  trap cleanup EXIT
  create_cluster
  install_istio
  build_images
  install_stack
  scale_stack
  start_load
  healthy_release
  releases_in_a_row_then_undo
  failing_release
  log "PASS: healthy release promoted, two releases in a row and an undo, failing release rolled back"
}

main "$@"
