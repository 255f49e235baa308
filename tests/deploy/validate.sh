#!/usr/bin/env bash
# The deployment files, checked without a container engine or a cluster:
#   - deploy/compose/compose.yaml with `docker-compose config` (PyPI docker-compose 1.29);
#   - its Prometheus config with `promtool check config` (Debian's prometheus package);
#   - deploy/k8s/generated.yaml up to date with schemas/ and deploy/prometheus/alerts.yml;
#   - every manifest of deploy/k8s with `kubernetes-validate --strict` (PyPI), against the
#     Kubernetes API schemas (the Prometheus Operator's ServiceMonitor and PrometheusRule have
#     none there: the rules are promtool-tested by tests/deploy.rs).
# Installs the two Python tools into venvs under target/ when missing (they need different
# jsonschema versions). The Dockerfile is not built here (no container engine on this machine).
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "deploy-check: $*" >&2; }
die() { echo "deploy-check: error: $*" >&2; exit 1; }
source deploy/local/installing.sh
python_venv target/deploy-compose-venv 'PyYAML==5.3.1' 'docker-compose==1.29.2'
python_venv target/deploy-k8s-venv 'kubernetes-validate>=1.30' 'PyYAML>=6'

echo "deploy-check: docker-compose config (deploy/compose/compose.yaml)"
target/deploy-compose-venv/bin/docker-compose -f deploy/compose/compose.yaml config -q

echo "deploy-check: promtool check config (deploy/compose/prometheus.yml)"
promtool=$(command -v promtool || bash deploy/local/stack.sh path promtool)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp deploy/compose/prometheus.yml deploy/prometheus/alerts.yml "$work/"
"$promtool" check config "$work/prometheus.yml" >/dev/null

echo "deploy-check: deploy/k8s/generated.yaml up to date"
target/deploy-k8s-venv/bin/python deploy/k8s/generate.py --check

echo "deploy-check: kubernetes-validate --strict deploy/k8s"
manifests=()
for f in deploy/k8s/*.yaml; do [[ $f == */kustomization.yaml ]] || manifests+=("$f"); done
out=$(target/deploy-k8s-venv/bin/kubernetes-validate --strict "${manifests[@]}" 2>&1 || true)
echo "$out" | sed 's/^/  /'
if echo "$out" | grep -q '^ERROR'; then
    echo "deploy-check: a manifest does not validate" >&2
    exit 1
fi
passed=$(echo "$out" | grep -c '^INFO .* passed' || true)
[[ $passed -ge 15 ]] || { echo "deploy-check: only $passed resources validated" >&2; exit 1; }
echo "deploy-check: OK ($passed Kubernetes resources, compose, Prometheus config)"
