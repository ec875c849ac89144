# Entry points. `make run` and `make test` are the two commands in README.md; .ci/run calls `make test`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
BAZEL := bazel/bazel
WORKSPACE_DIR ?= workspace
CLI := out/constellation

.PHONY: setup build services libvirt-provider run test lint go-test bazel-test image image-test cluster-test e2e-test qemu-test check-generated generate protos bench clean

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
	@missing=""; command -v libvirtd >/dev/null || missing="$$missing libvirt-daemon-system"; \
	command -v qemu-img >/dev/null || missing="$$missing qemu-utils"; \
	command -v dnsmasq >/dev/null || missing="$$missing dnsmasq-base"; \
	if [ -n "$$missing" ]; then echo "installing$$missing (the qemu provider)"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	@command -v terraform >/dev/null || { echo "installing terraform v1.5.7 from source (Go module proxy)"; \
		GOBIN=/usr/local/bin go install github.com/hashicorp/terraform@v1.5.7; }
	bazel/setup.sh
	go mod download
	bazel/kubernetes/build.sh all

## build: build the CLI, its Terraform provider, the services' images and the node image into out/ (what
## `constellation mini up` needs beside the CLI)
build: setup image services
	$(BAZEL) build --stamp //cli/cmd/constellation //terraform/provider/cmd/terraform-provider-constellation
	mkdir -p out
	install -m 0755 bazel-bin/cli/cmd/constellation/constellation_/constellation $(CLI)
	install -m 0755 bazel-bin/terraform/provider/cmd/terraform-provider-constellation/terraform-provider-constellation_/terraform-provider-constellation out/

## services: the JoinService, KeyService and VerificationService images into out/services/
services: setup
	$(BAZEL) build //joinservice/cmd/joinservice:image //keyservice/cmd/keyservice:image //verify/cmd/verificationservice:image
	mkdir -p out/services
	install -m 0644 bazel-bin/joinservice/cmd/joinservice/image.tar out/services/joinservice.tar
	install -m 0644 bazel-bin/keyservice/cmd/keyservice/image.tar out/services/keyservice.tar
	install -m 0644 bazel-bin/verify/cmd/verificationservice/image.tar out/services/verificationservice.tar

## libvirt-provider: the libvirt Terraform provider the qemu provider needs, built from source into out/
## (needs libvirt-daemon-system, qemu-utils and dnsmasq-base to be used)
libvirt-provider: setup
	mkdir -p out
	terraform/libvirt/build.sh out/terraform-provider-libvirt

## run: the main job: build everything and start (or re-check) a local cluster in $(WORKSPACE_DIR)
run: build
	$(CLI) -C $(WORKSPACE_DIR) mini up

## test: every check CI runs: lint, generated files, go test, bazel test, the image checks, a real cluster
test: setup lint check-generated go-test bazel-test image-test cluster-test e2e-test qemu-test

## image: build the node image (UKI, erofs root + dm-verity, QEMU disk) into out/image; cached by inputs
image: setup
	image/mkosi/build.sh

## image-test: the image builds twice bit-identically and a QEMU boot shows the predicted PCRs (cached)
image-test: setup
	image/test.sh

## cluster-test: a control plane and a worker from the image become a real kubeadm cluster (local nodes)
cluster-test: setup image services
	CI=true CONSTELLATION_IMAGE_DIR=$$(readlink -f out/image) go test -count=1 -timeout 30m -v \
		-run 'TestTwoNodeCluster' ./internal/cloud/local/cluster/

## e2e-test: the built CLI end to end: mini up, kubectl, verify (and a tampered node), mini down
e2e-test: build
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) go test -count=1 -timeout 40m -v -run TestMiniUp ./cli/e2e/

## qemu-test: the qemu provider's module for real: create makes two libvirt domains, terminate removes them
qemu-test: build libvirt-provider
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) CONSTELLATION_E2E_QEMU=1 go test -count=1 -timeout 40m -v \
		-run TestQEMUCreate ./cli/e2e/

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
	bench/cli.sh

clean:
	rm -rf out
	$(BAZEL) clean
