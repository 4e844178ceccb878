# WireKube. `make demo` runs the local multi-site demo; `make test` runs every test.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: all test test-kernel demo manifests lint fmt deps build help k8s tools images lint-scripts

# The Kubernetes release the lab's control plane runs (the oldest we support; README).
# `make test K8S_VERSION=v1.37.2` selects another; the build is cached per version.
K8S_VERSION ?= v1.34.4
export K8S_VERSION

all: build

help:
	@echo "make demo       local multi-site demo in network namespaces (root)"
	@echo "make test       every test: unit, property, manifests, API server, lab scenarios (root)"
	@echo "make test-kernel the kernel WireGuard engine's tests in a QEMU VM (root; part of make test)"
	@echo "make manifests  regenerate config/crd from the Rust types"
	@echo "make lint       rustfmt check + clippy -D warnings"
	@echo "make images     the container images, without Docker (root; docs/images.md)"

deps:
	@if [ "$$(id -u)" = 0 ]; then ./scripts/install-deps.sh; else echo ">> not root: skipping system package check (lab tests need root)"; fi

build:
	$(CARGO) build --workspace --bins

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy, built from their Go
# modules into ~/.cache/wirekube/k8s/<version> (once; later runs only print the directory).
k8s:
	./scripts/build-k8s.sh >/dev/null

# helm (chart lint/render/install) and actionlint (release workflow), built from their Go modules
# into ~/.cache/wirekube/tools/<tool>-<version> (once).
tools:
	./scripts/build-go-tool.sh helm >/dev/null
	./scripts/build-go-tool.sh actionlint >/dev/null

# ghcr.io/wirekube/wirekube-{operator,agent,relay}:v<version> from the debug build (PROFILE=release
# for release binaries); e2e/tests/images.rs builds and runs them in make test.
images: build
	./scripts/build-images.sh

lint-scripts:
	shellcheck scripts/build-images.sh scripts/build-go-tool.sh scripts/lab-capture.sh scripts/lab-profile.sh e2e/kind/run.sh e2e/kind/check.sh

# Integration tests spawn the operator, agent, relay and API server binaries, so build them first.
test: deps k8s tools build
	$(CARGO) test --workspace --no-fail-fast -- --skip seed_topology_ --skip seed_decision_ --skip pod_traffic_ --skip nat_grid_ --skip faults_
	@# The seed topologies each run a whole lab (API server, operator, relay, agents): one at a time.
	$(CARGO) test -p wirekube-e2e --test topologies -- --test-threads=1
	$(CARGO) test -p wirekube-e2e --test pod_traffic -- --test-threads=1
	@# The NAT grid: ten nodes, every pair of NAT kinds, one lab (docs/topologies.md).
	$(CARGO) test -p wirekube-e2e --test nat_grid -- --test-threads=1
	@# The fault suite: faults grouped per lab, each with a recovery deadline (docs/benchmarks.md).
	$(CARGO) test -p wirekube-e2e --test faults -- --test-threads=1
	@# Kernel WireGuard (the engine real nodes pick) in a VM with Debian's kernel, every group
	@# (dataplane, agent lab, seeds): docs/dataplane.md; timings in docs/benchmarks.md.
	$(MAKE) test-kernel

# Boots Debian's kernel in QEMU over this machine's root filesystem and runs the kernel-engine
# tests there (the machines have no WireGuard module). Fails when the VM cannot boot.
VM_TESTS ?= dataplane agent_lab seeds
test-kernel: deps k8s
	CARGO=$(CARGO) WIREKUBE_VM_TESTS="$(VM_TESTS)" ./scripts/test-kernel.sh

manifests:
	$(CARGO) run -q -p wirekube-crds --bin crdgen

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

demo: deps k8s build
	./target/debug/wirekube-demo $(DEMO_ARGS)
