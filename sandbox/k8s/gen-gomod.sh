#!/usr/bin/env bash
# Regenerates go.mod/go.sum for K8S_VERSION in ../versions.env: requires k8s.io/kubernetes at that
# version and replaces each staging module (a local path in its go.mod) with the published v0.X.Y.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ../versions.env
gomod="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
{
  echo "// Wrapper module that builds the Kubernetes control plane from the official k8s.io/kubernetes"
  echo "// module. k8s.io/kubernetes replaces its staging modules with local paths, so we pin each one"
  echo "// to its published version here. Regenerate with sandbox/k8s/gen-gomod.sh when bumping."
  echo "module github.com/raft-operator/sandbox-k8s"
  echo
  echo "go 1.24.0"
  echo
  echo "require k8s.io/kubernetes v$K8S_VERSION"
  echo
  echo "replace ("
  grep -E '^\s*k8s.io/.* => ./staging' "$gomod" | awk -v v="v0.${K8S_VERSION#1.}" '{print "\t"$1" => "$1" "v}'
  echo ")"
} >go.mod
rm -f go.sum
GOFLAGS=-mod=mod go mod tidy
echo "go.mod pinned to kubernetes v$K8S_VERSION ($(grep -c '=>' go.mod) staging modules)"
