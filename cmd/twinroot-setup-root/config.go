package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/twinroot/twinroot/internal/bootarg"
)

// Policy is how strictly the composefs root must be protected by fs-verity.
type Policy int

// The policies. PolicyRequire is the zero value and the default.
const (
	// PolicyRequire boots only when image.cfs is sealed with fs-verity
	// (the kernel's measurement is compared with the command line) and
	// mounts the overlay with verity=require, so every file's content is
	// checked against the digest in the image.
	PolicyRequire Policy = iota
	// PolicyIfSupported does the same where fs-verity works, and
	// otherwise computes the image's digest in Go, compares it, and
	// mounts with verity=off, logging a warning that says so.
	PolicyIfSupported
)

// String returns "require" or "if-supported".
func (p Policy) String() string {
	if p == PolicyIfSupported {
		return "if-supported"
	}
	return "require"
}

// ParsePolicy parses "require" or "if-supported".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "require":
		return PolicyRequire, nil
	case "if-supported":
		return PolicyIfSupported, nil
	}
	return 0, fmt.Errorf("%w: verity policy %q (want require or if-supported)", ErrConfig, s)
}

// VerityKey is the kernel argument that selects the policy.
const VerityKey = "twinroot.verity"

// ErrConfig: a malformed configuration file or policy value.
var ErrConfig = errors.New("setup-root: bad configuration")

// FileConfig is the configuration file in the initramfs
// (DefaultConfig): lines of "key = value", '#' starts a comment. The
// only key is "verity" (require or if-supported).
type FileConfig struct {
	Verity *Policy // nil when the file does not set it
}

// ParseConfig parses a configuration file. Unknown keys are errors, so
// that a typo in a security setting is never silently ignored.
func ParseConfig(data []byte) (FileConfig, error) {
	var c FileConfig
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return c, fmt.Errorf("%w: line %d: %q is not key = value", ErrConfig, n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "verity":
			p, err := ParsePolicy(v)
			if err != nil {
				return c, fmt.Errorf("line %d: %w", n, err)
			}
			c.Verity = &p
		default:
			return c, fmt.Errorf("%w: line %d: unknown key %q", ErrConfig, n, k)
		}
	}
	return c, sc.Err()
}

// EffectivePolicy combines the configuration file and the kernel command
// line: the stricter wins, and with neither the policy is require. So an
// initramfs whose file says require cannot be relaxed from the boot menu,
// while the default can be relaxed with twinroot.verity=if-supported (for
// file systems without fs-verity) and an if-supported file can be
// tightened per boot.
func EffectivePolicy(file FileConfig, cmdline string) (Policy, error) {
	var fromCmdline *Policy
	if v, ok := bootarg.Value(cmdline, VerityKey); ok {
		p, err := ParsePolicy(v)
		if err != nil {
			return 0, fmt.Errorf("%s=: %w", VerityKey, err)
		}
		fromCmdline = &p
	}
	switch {
	case file.Verity == nil && fromCmdline == nil:
		return PolicyRequire, nil
	case file.Verity == nil:
		return *fromCmdline, nil
	case fromCmdline == nil:
		return *file.Verity, nil
	}
	return min(*file.Verity, *fromCmdline), nil // PolicyRequire (0) is the stricter
}
