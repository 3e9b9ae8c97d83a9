// Package bootarg formats and parses the twinroot= kernel argument that ties
// a boot entry to a deployment and its composefs image:
//
//	twinroot=<deployment id>:<image digest in hex>
//
// The hex digest's length names the algorithm (64: SHA-256, 128: SHA-512).
// A deployment id is 1 to 40 characters of [a-z0-9._-], starting with a
// letter or digit, so it never needs quoting on a kernel command line and
// never holds a colon. The package is pure (standard library and verity
// only) so that the static initramfs binary can import it.
package bootarg

import (
	"errors"
	"fmt"
	"strings"

	"github.com/twinroot/twinroot/verity"
)

// Key is the kernel argument's name.
const Key = "twinroot"

// Errors.
var (
	// ErrMissing: the command line has no twinroot= argument.
	ErrMissing = errors.New("bootarg: no twinroot= kernel argument")
	// ErrMalformed: the argument is there but cannot be parsed.
	ErrMalformed = errors.New("bootarg: malformed twinroot= kernel argument")
	// ErrBadID: a deployment id outside the allowed alphabet or length.
	ErrBadID = errors.New("bootarg: bad deployment id")
)

// MaxIDLen is the longest deployment id.
const MaxIDLen = 40

// CheckID reports whether id is a valid deployment id.
func CheckID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("%w %q: must be 1 to %d characters", ErrBadID, id, MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '.' || c == '_' || c == '-'
		}
		if !ok {
			return fmt.Errorf("%w %q: only [a-z0-9._-], starting with a letter or digit", ErrBadID, id)
		}
	}
	return nil
}

// Arg is a parsed twinroot= argument.
type Arg struct {
	ID    string        // deployment id
	Image verity.Digest // composefs image digest
}

// String formats the argument as it appears on the command line.
func (a Arg) String() string { return Key + "=" + a.ID + ":" + a.Image.Hex() }

// Format returns the kernel argument for deployment id and image d.
func Format(id string, d verity.Digest) (string, error) {
	if err := CheckID(id); err != nil {
		return "", err
	}
	if d.IsZero() {
		return "", fmt.Errorf("%w: zero image digest for deployment %q", ErrMalformed, id)
	}
	return Arg{ID: id, Image: d}.String(), nil
}

// ParseValue parses the value of a twinroot= argument ("<id>:<hex>").
func ParseValue(v string) (Arg, error) {
	id, hex, ok := strings.Cut(v, ":")
	if !ok {
		return Arg{}, fmt.Errorf("%w %q: want <deployment id>:<digest>", ErrMalformed, v)
	}
	if err := CheckID(id); err != nil {
		return Arg{}, fmt.Errorf("%w %q: %w", ErrMalformed, v, err)
	}
	if strings.Contains(hex, ":") {
		return Arg{}, fmt.Errorf("%w %q: the digest is bare hex", ErrMalformed, v)
	}
	d, err := verity.ParseDigest(hex)
	if err != nil {
		return Arg{}, fmt.Errorf("%w %q: %w", ErrMalformed, v, err)
	}
	return Arg{ID: id, Image: d}, nil
}

// Fields splits a kernel command line as the kernel does: on spaces, tabs
// and newlines, with double quotes grouping (the quotes are removed). A bare,
// unquoted "--" ends the kernel's arguments: what follows is passed to init,
// so it is left out.
func Fields(cmdline string) []string {
	var out []string
	var b strings.Builder
	quoted, have, hadQuote := false, false, false
	for _, r := range cmdline {
		switch {
		case r == '"':
			quoted = !quoted
			have, hadQuote = true, true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				if !hadQuote && b.String() == "--" {
					return out
				}
				out = append(out, b.String())
				b.Reset()
				have, hadQuote = false, false
			}
			continue
		default:
			b.WriteRune(r)
			have = true
		}
	}
	if have && (hadQuote || b.String() != "--") {
		out = append(out, b.String())
	}
	return out
}

// Parse finds the twinroot= argument in a kernel command line such as
// /proc/cmdline. The last one wins, as for most kernel arguments. Without
// one the error is ErrMissing.
func Parse(cmdline string) (Arg, error) {
	var val string
	found := false
	for _, f := range Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, Key+"="); ok {
			val, found = v, true
		}
	}
	if !found {
		return Arg{}, ErrMissing
	}
	return ParseValue(val)
}

// Value returns the value of the last key=value argument named key in
// cmdline, and whether there was one.
func Value(cmdline, key string) (string, bool) {
	var val string
	found := false
	for _, f := range Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			val, found = v, true
		}
	}
	return val, found
}
