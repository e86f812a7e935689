# WSRC — WebSocket Remote Card. `make` (or `make help`) lists the targets.
#
# The two set-up commands for a fresh Debian / Ubuntu / Raspberry Pi OS
# machine are `make demo` and `make test`; both install missing system
# packages first (scripts/deps.sh, apt-get as root or via sudo).

SHELL   := /bin/bash
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/wsrc-go/wsrc/internal/version.Version=$(VERSION)
CMDS    := $(notdir $(wildcard cmd/*))
# Go test flags for `make test`; TESTFLAGS adds to them (e.g. TESTFLAGS=-v).
GOTESTFLAGS ?= -race -count=1 -timeout 20m

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install the system packages needed to build (gcc, libusb, pcsclite headers)
	@scripts/deps.sh build

.PHONY: deps-test
deps-test: ## Install the system packages the tests need (pcscd, vpcd, QEMU, ...)
	@scripts/deps.sh test

.PHONY: build
build: deps ## Build every program in cmd/ into bin/
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))

.PHONY: demo
demo: build ## Run server + agent (2 simulated SIMs) + a user session on loopback
	@scripts/demo.sh

# staticcheck, pinned; `go run` builds it in the module cache (no install).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: vet
vet: ## gofmt check, go vet and staticcheck
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

.PHONY: test
test: deps-test vet deb ## Build the .debs, run vet and every test with -race (pcscd+vpcd, QEMU VMs, the packages); ends with the skipped tests and why
	@scripts/fetch-kernel.sh
	set -o pipefail; $(GO) test -json $(GOTESTFLAGS) $(TESTFLAGS) ./... | $(GO) run ./internal/testenv/testreport

.PHONY: bench
bench: deps ## Run the Go benchmarks (relay, CCID, T=1, codec)
	$(GO) test -run '^$$' -bench . -benchmem ./...

.PHONY: bench-relay
bench-relay: build ## Relay benchmark (closed/open loop, idle memory); paste into docs/performance.md
	$(BIN)/wsrc-bench

.PHONY: bench-vm
bench-vm: deps-test ## CCID in a VM: direct driver vs pcscd + libccid (QEMU, ~2 min); paste into docs/performance.md
	scripts/fetch-kernel.sh && WSRC_VM_BENCH=1 $(GO) test -count=1 -timeout 20m -run TestQEMUBenchCCIDvsPCSC -v ./test/qemu/

.PHONY: bench-lab
bench-lab: deps-test ## Reader lab in a VM (test/gadget, ~10 min): APDU rates per profile, 8 slots vs 1, direct vs pcscd + libccid; paste into docs/performance.md
	scripts/fetch-kernel.sh && WSRC_GADGET_BENCH=1 $(GO) test -count=1 -timeout 30m -run TestGadgetConcurrency -v ./test/gadget/

.PHONY: soak
soak: ## Soak the relay: 12,000 connections churned, 5,000 idle cards, list, throttle, pre-upgrade (~40 s); paste into docs/reliability.md
	WSRC_SOAK=1 $(GO) test -count=1 -timeout 15m -v -run TestSoak ./test/soak/

.PHONY: fuzz
fuzz: ## Run every fuzz target for 30 s each
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 30s $$pkg || exit 1; \
	  done; \
	done

.PHONY: cross
cross: ## Cross-build Pi binaries into build/cross/ (server arm64/armv6/armv7, agent arm64/armhf)
	@scripts/cross-build.sh build

.PHONY: cross-test
cross-test: ## Cross-build, then run the pure-Go tests for arm64 and armv7 under qemu-user
	@scripts/cross-build.sh all

.PHONY: units
units: ## Check systemd units, sysusers and udev rules (verify, security score)
	$(GO) test -count=1 -v ./test/units

.PHONY: install
install: ## Install bin/ programs and systemd/ files under $(DESTDIR) (run `make build` first)
	install -D -m755 -t $(DESTDIR)/usr/bin $(BIN)/wsrc-server $(BIN)/wsrc-agent $(BIN)/wsrc
	install -D -m644 -t $(DESTDIR)/usr/lib/systemd/system systemd/wsrc-server.service systemd/wsrc-server-user.socket systemd/wsrc-server-card.socket systemd/wsrc-agent.service systemd/wsrc-vpcd@.service
	install -D -m644 systemd/wsrc.sysusers.conf $(DESTDIR)/usr/lib/sysusers.d/wsrc.conf
	install -D -m644 systemd/60-wsrc-agent.rules $(DESTDIR)/usr/lib/udev/rules.d/60-wsrc-agent.rules
	install -D -m644 systemd/wsrc-agent.polkit.rules $(DESTDIR)/usr/share/polkit-1/rules.d/60-wsrc-agent.rules
	install -D -m644 systemd/default/wsrc-server $(DESTDIR)/etc/default/wsrc-server
	install -D -m644 systemd/default/wsrc-agent $(DESTDIR)/etc/default/wsrc-agent

.PHONY: deb
deb: deps ## Build the Debian packages (wsrc-agent, wsrc-server, wsrc; amd64/arm64/armhf) into build/deb/
	@scripts/package.sh

.PHONY: deb-test
deb-test: deb ## Build the .debs, then check them (contents, deps, lintian, install/upgrade/remove/purge)
	@scripts/deps.sh deb
	WSRC_DEB_TEST=1 $(GO) test -count=1 -v ./test/deb

.PHONY: container
container: ## Build the wsrc-server container image wsrc-server:latest (FROM scratch, nothing pulled)
	@deploy/container/build.sh prebuilt wsrc-server:latest

.PHONY: container-test
container-test: ## Build the server image and run it read-only with an agent and a user (starts dockerd if needed)
	@scripts/container-test.sh

.PHONY: pi-image
pi-image: ## Build the bootable arm64 Raspberry Pi SD-card image build/pi-image/wsrc-pi-arm64.img(.xz) (root; Debian's archive)
	deploy/pi-image/build.sh all

.PHONY: pi-image-test
pi-image-test: ## Build the Pi image (no xz) and boot it under qemu-system-aarch64: agent + server + growroot checks
	@deploy/pi-image/build.sh image
	@deploy/pi-image/build.sh test-deps
	WSRC_PIBOOT=1 $(GO) test -count=1 -v -timeout 40m -run TestPiBoot ./test/piboot/

.PHONY: clean
clean: ## Remove build outputs
	rm -rf $(BIN) build
