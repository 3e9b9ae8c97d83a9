# twinroot build, test and demo entry points. See README.md.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 0
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
STATICCHECK_VERSION := 2026.2.2

# Debian packages the tests, benchmarks and demo need.
DEB_PACKAGES := erofs-utils fsverity docker-registry skopeo qemu-system-x86 ovmf \
	systemd-boot-efi busybox-static e2fsprogs cpio kmod attr acl util-linux \
	hyperfine time debootstrap gzip zstd file xz-utils debian-archive-keyring tar curl python3 xfsprogs btrfs-progs

.PHONY: all deps build test vet lint gotest scripttest bench demo clean

all: build

# deps installs what the tests need. Idempotent: apt runs only when a package
# is missing, and then 'apt-get update' runs once before the install.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@command -v staticcheck >/dev/null 2>&1 && staticcheck --version | grep -q '$(STATICCHECK_VERSION)' || \
		$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@bash test/vm/prepare-kernel.sh >/dev/null
	@bash bench/reference-tools.sh >/dev/null

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/updatectl ./cmd/updatectl
	$(GO) build -trimpath -ldflags '$(LDFLAGS) -extldflags -static' -o bin/twinroot-setup-root ./cmd/twinroot-setup-root
	@file bin/twinroot-setup-root 2>/dev/null | grep -q 'statically linked' || { echo "twinroot-setup-root is not static"; exit 1; }

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

lint: vet
	PATH="$$PATH:$$($(GO) env GOPATH)/bin" staticcheck ./...

gotest:
	$(GO) test -count=1 -timeout 50m ./...

scripttest: build
	@for t in test/*_test.sh; do [ -e "$$t" ] || continue; echo "== $$t"; bash "$$t" || exit 1; done

test: deps lint gotest scripttest

bench: deps build
	@for b in bench/*.sh; do [ -e "$$b" ] || continue; echo "== $$b"; bash "$$b" || exit 1; done

demo: deps build
	bash test/demo.sh

clean:
	rm -rf bin
