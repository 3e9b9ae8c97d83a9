//go:build tools

// Package depspin pins the module versions the packages of this module will import, so that
// helpers working in parallel do not race on go.mod. It is removed once every dependency
// is imported for real.

package depspin

import (
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "github.com/google/go-containerregistry/pkg/registry"
	_ "github.com/google/go-containerregistry/pkg/v1/layout"
	_ "github.com/google/go-containerregistry/pkg/v1/remote"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/opencontainers/image-spec/specs-go/v1"
	_ "github.com/spf13/cobra"
	_ "github.com/vbauerster/mpb/v8"
	_ "go.podman.io/storage"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/term"
)
