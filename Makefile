# twinroot build, test and demo entry points. See README.md.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 0
# The pure-Go OpenPGP backend of go.podman.io/image's signature package (no
# gpgme, no cgo). Without the tag everything still builds, but trust.Check
# refuses any policy other than insecureAcceptAnything (trust.ErrNoEngine).
export GOFLAGS := -tags=containers_image_openpgp
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Go tools, each pinned as package@module-version: the Go module proxy serves
# semantic versions only (staticcheck's release 2026.2.2 is module v0.8.2).
# They are installed into $(TOOLS) and run from there, never looked up on PATH.
TOOLS := $(CURDIR)/.tools
GO_TOOLS := honnef.co/go/tools/cmd/staticcheck@v0.8.2
STATICCHECK := $(TOOLS)/staticcheck

# Debian packages the demo needs (test/demo.sh and make build).
DEMO_DEB_PACKAGES := attr curl docker-registry erofs-utils file fsverity skopeo systemd-boot-efi util-linux

# Debian packages the tests and benchmarks need.
DEB_PACKAGES := erofs-utils fsverity docker-registry skopeo qemu-system-x86 ovmf mtools dosfstools fdisk \
	systemd-boot-efi busybox-static e2fsprogs cpio kmod attr acl util-linux \
	hyperfine time debootstrap gzip zstd file xz-utils debian-archive-keyring tar curl python3 xfsprogs btrfs-progs gnupg systemd

.PHONY: all deps deps-demo deps-test tools build install test vet lint gotest scripttest bench demo e2e e2e-short clean

all: build

# apt-install installs those of the Debian packages $(1) that are missing.
# Idempotent: nothing runs when all are installed; otherwise 'apt-get update'
# runs once, then one 'apt-get install' of the missing ones.
define apt-install
@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
endef

# deps-demo installs only what make demo uses.
deps-demo:
	$(call apt-install,$(DEMO_DEB_PACKAGES))

# deps-test installs everything the tests and benchmarks use: the Debian
# packages, the Go tools, the VM test kernel and the reference composefs tools.
deps-test: tools
	$(call apt-install,$(sort $(DEMO_DEB_PACKAGES) $(DEB_PACKAGES)))
	@bash test/vm/prepare-kernel.sh >/dev/null
	@bash bench/reference-tools.sh >/dev/null

deps: deps-test

# tools installs each of $(GO_TOOLS) into $(TOOLS) unless the binary there was
# built from exactly that package and module version (go version -m).
tools:
	@for t in $(GO_TOOLS); do \
		pkg=$${t%@*}; ver=$${t##*@}; bin=$(TOOLS)/$${pkg##*/}; \
		$(GO) version -m "$$bin" 2>/dev/null | \
			awk -v p="$$pkg" -v v="$$ver" '$$1 == "path" { pok = $$2 == p } $$1 == "mod" { vok = $$3 == v } END { exit !(pok && vok) }' || \
			{ echo "installing $$t into $(TOOLS)"; GOBIN=$(TOOLS) $(GO) install "$$t" || exit 1; }; \
	done

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/updatectl ./cmd/updatectl
	ln -f bin/updatectl bin/twinroot
	bin/updatectl __docs bin
	$(GO) build -trimpath -ldflags '$(LDFLAGS) -extldflags -static' -o bin/twinroot-setup-root ./cmd/twinroot-setup-root
	@file bin/twinroot-setup-root 2>/dev/null | grep -q 'statically linked' || { echo "twinroot-setup-root is not static"; exit 1; }

# install: PREFIX (default /usr/local) and DESTDIR honoured; see dist/install.sh
# for the updatectl name clash with systemd >= 257.
install: build
	PREFIX="$(or $(PREFIX),/usr/local)" DESTDIR="$(DESTDIR)" bash dist/install.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

lint: vet tools
	$(STATICCHECK) ./...

gotest:
	$(GO) test -count=1 -timeout 50m ./...

scripttest: build
	@for t in test/*_test.sh; do [ -e "$$t" ] || continue; echo "== $$t"; bash "$$t" || exit 1; done

test: deps-test lint gotest scripttest e2e-short

bench: deps-test build
	@for b in bench/*.sh; do [ -e "$$b" ] || continue; echo "== $$b"; bash "$$b" || exit 1; done

# e2e: the whole scenario in QEMU guests (OVMF, systemd-boot, the 6.12 kernel,
# systemd, updatectl in the guest) against a registry on 127.0.0.1, about an
# hour under TCG; see README.md for what it needs and how long it takes.
e2e: deps build
	bash test/e2e/run.sh

# e2e-short: the short path make test runs (the whole scenario does not fit
# its budget): the harness boot that installs v1 (H, I), v1 on composefs (1),
# the upgrade to v2 (2) and tampering (6). About 15 minutes under TCG.
e2e-short: deps build
	TWINROOT_E2E_STEPS=H,I,1,2,6 bash test/e2e/run.sh

demo: deps-demo build
	bash test/demo.sh

clean:
	rm -rf bin
