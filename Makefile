# Entry points. `make run` and `make test` are the two commands in README.md; .ci/run calls `make test`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
BAZEL := bazel/bazel
WORKSPACE_DIR ?= workspace
CLI := out/constellation

.PHONY: setup kubernetes-next build services libvirt-provider run test test-stages lint go-test bazel-test image image-b image-locked reproduce image-test cluster-test e2e-test fault-test kms-test ha-test terraform-test qemu-test check-generated generate protos bench clean

## setup: install what a fresh machine lacks (the host tools of bazel/hosttools.sh, Terraform, Bazel in a
## chroot, Go modules, the Kubernetes binaries integration tests run); idempotent and cached
setup:
	bazel/hosttools.sh install
	@command -v terraform >/dev/null || { echo "installing terraform v1.5.7 from source (Go module proxy)"; \
		GOBIN=/usr/local/bin go install github.com/hashicorp/terraform@v1.5.7; }
	bazel/setup.sh
	go mod download
	bazel/kubernetes/build.sh all

## kubernetes-next: the components of the newest pinned Kubernetes version as well, which the upgrade
## end-to-end test and benchmark move a cluster to (the local provider serves every version built here);
## cached like setup's
KUBERNETES_NEXT := v1.34.10
kubernetes-next: setup
	bazel/kubernetes/build.sh --version $(KUBERNETES_NEXT) all

## build: build the CLI, its Terraform provider, the services' images and the node image into out/ (what
## `constellation mini up` needs beside the CLI)
build: setup image services
	$(BAZEL) build --stamp //cli/cmd/constellation //localprovider/cmd/terraform-provider-constellation
	mkdir -p out
	install -m 0755 bazel-bin/cli/cmd/constellation/constellation_/constellation $(CLI)
	install -m 0755 bazel-bin/localprovider/cmd/terraform-provider-constellation/terraform-provider-constellation_/terraform-provider-constellation out/

## services: the JoinService, KeyService, VerificationService and upgrade controller images into out/services/
services: setup
	$(BAZEL) build //joinservice/cmd/joinservice:image //keyservice/cmd/keyservice:image //verify/cmd/verificationservice:image \
		//operator/cmd/operator:image
	mkdir -p out/services
	install -m 0644 bazel-bin/joinservice/cmd/joinservice/image.tar out/services/joinservice.tar
	install -m 0644 bazel-bin/keyservice/cmd/keyservice/image.tar out/services/keyservice.tar
	install -m 0644 bazel-bin/verify/cmd/verificationservice/image.tar out/services/verificationservice.tar
	install -m 0644 bazel-bin/operator/cmd/operator/image.tar out/services/operator.tar

## libvirt-provider: the libvirt Terraform provider the qemu provider needs, built from source into out/
## (needs libvirt-daemon-system, qemu-utils and dnsmasq-base to be used)
libvirt-provider: setup
	mkdir -p out
	terraform/libvirt/build.sh out/terraform-provider-libvirt

## run: the main job: build everything and start (or re-check) a local cluster in $(WORKSPACE_DIR)
run: build
	$(CLI) -C $(WORKSPACE_DIR) mini up

## test: every check CI runs: lint, generated files, go test, bazel test, the image checks, a real cluster;
## one stage after another, each timed (bazel/stages.sh prints the table, also when CI's time limit stops it)
TEST_STAGES := setup lint check-generated go-test bazel-test image-test cluster-test e2e-test fault-test kms-test ha-test terraform-test qemu-test
test:
	@bazel/stages.sh $(TEST_STAGES)

# The stages in one make run (shared prerequisites run once), each followed by a mark that records its end.
test-stages: $(foreach s,$(TEST_STAGES),$(s) stage-done-$(s))
stage-done-%:
	@bazel/stages.sh --done $*

## image: build the node image (UKI, erofs root + dm-verity, QEMU disk) into out/image; cached by inputs.
## Packages come from Debian's archive as it is today; a difference from image/mkosi/packages.lock is a notice
image: setup
	image/mkosi/build.sh

## image-b: a second node image from this tree, its bootstrapper under another version string (so its
## measurements differ), into out/image-b: what the upgrade end-to-end test rolls a cluster to; cached by inputs
image-b: setup
	$(BAZEL) build //bootstrapper/cmd/bootstrapper:bootstrapper_image_b
	image/mkosi/build.sh --out out/image-b \
		--bootstrapper bazel-bin/bootstrapper/cmd/bootstrapper/bootstrapper_image_b_/bootstrapper_image_b

## image-locked: a release build: fails unless the image holds exactly packages.lock, and saves the
## package bundle that rebuilds it later without the archive to out/image-packages.tar. (CONSTELLATION_LOCKED=1
## makes every step strict: the Bazel chroot's version, the kube-proxy image's packages, the image.)
image-locked: setup
	CONSTELLATION_LOCKED=1 image/mkosi/build.sh --locked --save-bundle out/image-packages.tar

## reproduce: rebuild the image from this tree and compare its PCRs with a published measurements.json:
## make reproduce MEASUREMENTS=measurements.json [PUBLIC_KEY=cosign.pub] [BUNDLE=image-packages.tar]
reproduce: setup
	image/reproduce.sh --measurements "$(MEASUREMENTS)" $(if $(PUBLIC_KEY),--public-key "$(PUBLIC_KEY)") \
		$(if $(BUNDLE),--bundle "$(BUNDLE)")

## image-test: the image builds twice bit-identically and a QEMU boot shows the predicted PCRs (cached)
image-test: setup
	@bazel/hosttools.sh check image-test
	image/test.sh

## cluster-test: a control plane and a worker from the image become a real kubeadm cluster (local nodes); a node
## of the real image in detail (root, booted PCRs, state disk, containerd, a container, a restart)
cluster-test: setup image services
	@bazel/hosttools.sh check cluster-test
	CI=true CONSTELLATION_IMAGE_DIR=$$(readlink -f out/image) go test -count=1 -timeout 30m -v \
		-run 'TestTwoNodeCluster' ./localprovider/cluster/
	CI=true CONSTELLATION_IMAGE_DIR=$$(readlink -f out/image) go test -count=1 -timeout 10m -v \
		-run 'TestRealImage' ./localprovider/node/

## e2e-test: the built CLI end to end: mini up, kubectl, verify (and a tampered node), recover, rejoin, an
## upgrade to the next Kubernetes version and image B, mini down
e2e-test: build image-b kubernetes-next
	@bazel/hosttools.sh check e2e-test
	$(BAZEL) build //cli/e2e/workload:image
	install -m 0644 bazel-bin/cli/e2e/workload/image.tar out/e2e-workload.tar
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) CONSTELLATION_E2E_IMAGE_B=$$(readlink -f out/image-b) \
		CONSTELLATION_E2E_WORKLOAD=$$(readlink -f out/e2e-workload.tar) go test -count=1 -timeout 40m -v -run TestMiniUp ./cli/e2e/

## fault-test: the fault suite on a real local cluster: power cuts during kubeadm init and during a join, a
## restarted swtpm, the provider daemon killed during a reboot, a full state disk; each ends with every node
## Ready and verified and no key or secret lost
fault-test: build
	@bazel/hosttools.sh check fault-test
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) go test -count=1 -timeout 30m -v -run TestFaults ./cli/e2e/

## kms-test: user-managed keys on a real local cluster (mini up --kms local-kms): every disk key from the KMS,
## recover through it, a refusing KMS during a rejoin, a move to another KMS key with the old one disabled
kms-test: build
	@bazel/hosttools.sh check kms-test
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) go test -count=1 -timeout 30m -v -run TestUserManagedKeys ./cli/e2e/

## ha-test: two control planes and a worker on a real local cluster (mini up --control-planes 2): the second
## control plane joins as an etcd member, and an upgrade moves it with kubeadm upgrade node
ha-test: build kubernetes-next
	@bazel/hosttools.sh check ha-test
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) go test -count=1 -timeout 30m -v -run TestHAControlPlane ./cli/e2e/

## terraform-test: terraform/examples/local with real Terraform and the built provider (offline, through a
## filesystem mirror): two nodes Ready from the kubeconfig output, `constellation verify` from the outputs,
## a plan without changes, an upgrade to the next Kubernetes version and a roll-out to image B by terraform
## apply, a destroy that leaves nothing
terraform-test: build image-b kubernetes-next
	@bazel/hosttools.sh check terraform-test
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) CONSTELLATION_E2E_IMAGE_B=$$(readlink -f out/image-b) \
		go test -count=1 -timeout 40m -v -run TestTerraformCluster ./cli/e2e/

## qemu-test: the qemu provider's module for real: create makes two libvirt domains, terminate removes them
qemu-test: build libvirt-provider
	@bazel/hosttools.sh check qemu-test
	CONSTELLATION_E2E_CLI=$$(readlink -f $(CLI)) CONSTELLATION_E2E_QEMU=1 go test -count=1 -timeout 40m -v \
		-run TestQEMUCreate ./cli/e2e/

## lint: gofmt, go vet, staticcheck, go.mod tidiness
lint:
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	go tool staticcheck ./...
	go mod tidy -diff
	bazel/check-cli-deps.sh
	bazel/check-cli-deps.sh --self-test

go-test:
	@bazel/hosttools.sh check go-test
	CONSTELLATION_TEST_STRICT=1 go test -race -count=1 ./...

bazel-test:
	$(BAZEL) test //...

## check-generated: fail when BUILD files, MODULE.bazel's use_repo calls or protobuf code are stale
check-generated: setup
	@bazel/hosttools.sh check check-generated
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

## bench: print the performance figures (attestation, aTLS, JoinService, PCR precomputation, cluster, CLI,
## image roll-out, Kubernetes upgrade, the full upgrade of Kubernetes and image)
bench: setup build image-b kubernetes-next
	$(BAZEL) build //cli/e2e/workload:image
	install -m 0644 bazel-bin/cli/e2e/workload/image.tar out/e2e-workload.tar
	bench/attestation.sh
	bench/joinservice.sh
	bench/measurements.sh
	bench/verity.sh
	bench/cluster.sh
	bench/cli.sh
	bench/upgrade.sh
	bench/k8supgrade.sh
	bench/k8supgrade.sh --image

clean:
	rm -rf out
	$(BAZEL) clean
