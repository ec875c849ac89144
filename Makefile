# Entry points. `make run` and `make test` are the two commands in README.md; .ci/run calls `make test`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
BAZEL := bazel/bazel
WORKSPACE_DIR ?= workspace
CLI := out/constellation

.PHONY: setup build run test lint go-test bazel-test image image-test cluster-test check-generated generate protos bench clean

## setup: install what a fresh machine lacks (swtpm, protoc, Bazel in a chroot, Go modules, the
## Kubernetes binaries integration tests run); idempotent and cached
setup:
	@missing=""; command -v swtpm >/dev/null || missing="$$missing swtpm"; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	command -v containerd >/dev/null || missing="$$missing containerd"; \
	[ -e /usr/lib/systemd/boot/efi/linuxx64.efi.stub ] || missing="$$missing systemd-boot-efi"; \
	command -v osslsigncode >/dev/null || missing="$$missing osslsigncode"; \
	command -v sbsign >/dev/null || missing="$$missing sbsigntool"; \
	command -v objcopy >/dev/null || missing="$$missing binutils"; \
	command -v veritysetup >/dev/null || missing="$$missing cryptsetup-bin"; \
	command -v mkfs.erofs >/dev/null || missing="$$missing erofs-utils"; \
	command -v qemu-system-x86_64 >/dev/null || missing="$$missing qemu-system-x86"; \
	[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing="$$missing ovmf"; \
	command -v mkfs.vfat >/dev/null || missing="$$missing dosfstools"; \
	command -v mcopy >/dev/null || missing="$$missing mtools"; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	bazel/setup.sh
	go mod download
	bazel/kubernetes/build.sh all

## build: build the constellation CLI with Bazel into out/
build: setup
	$(BAZEL) build --stamp //cli/cmd/constellation
	mkdir -p out
	install -m 0755 bazel-bin/cli/cmd/constellation/constellation_/constellation $(CLI)

## run: the main job: build the CLI and write (or re-check) a local cluster configuration
run: build
	@if [ -f $(WORKSPACE_DIR)/constellation-conf.yaml ]; then \
		echo "$(WORKSPACE_DIR)/constellation-conf.yaml exists; checking it instead of overwriting it."; \
	else \
		$(CLI) -C $(WORKSPACE_DIR) config generate local; \
	fi
	$(CLI) -C $(WORKSPACE_DIR) config validate

## test: every check CI runs: lint, generated files, go test, bazel test, the image checks, a real cluster
test: setup lint check-generated go-test bazel-test image-test cluster-test

## image: build the node image (UKI, erofs root + dm-verity, QEMU disk) into out/image; cached by inputs
image: setup
	image/mkosi/build.sh

## image-test: the image builds twice bit-identically and a QEMU boot shows the predicted PCRs (cached)
image-test: setup
	image/test.sh

## cluster-test: a control plane and a worker from the image become a real kubeadm cluster (local nodes)
cluster-test: setup image
	$(BAZEL) build //joinservice/cmd/joinservice:image //keyservice/cmd/keyservice:image //verify/cmd/verificationservice:image
	CI=true CONSTELLATION_IMAGE_DIR=$$(readlink -f out/image) go test -count=1 -timeout 30m -v \
		-run 'TestTwoNodeCluster' ./internal/cloud/local/cluster/

## lint: gofmt, go vet, staticcheck, go.mod tidiness
lint:
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	go tool staticcheck ./...
	go mod tidy -diff

go-test:
	MEASUREMENTS_REQUIRE_TOOLS=1 go test -race -count=1 ./...

bazel-test:
	$(BAZEL) test //...

## check-generated: fail when BUILD files, MODULE.bazel's use_repo calls or protobuf code are stale
check-generated: setup
	bazel/protos.sh --check
	bazel/check-generated.sh
	bazel/check-generated.sh --self-test

## generate: regenerate protobuf code, BUILD files (gazelle) and MODULE.bazel's use_repo calls
generate: setup
	bazel/protos.sh
	$(BAZEL) run //:gazelle
	$(BAZEL) mod tidy

## protos: regenerate the Go code of the .proto files
protos:
	bazel/protos.sh

## bench: print the performance figures (attestation, aTLS, JoinService, PCR precomputation)
bench: setup
	bench/attestation.sh
	bench/joinservice.sh
	bench/measurements.sh
	bench/verity.sh
	bench/cluster.sh

clean:
	rm -rf out
	$(BAZEL) clean
