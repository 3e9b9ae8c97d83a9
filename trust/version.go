package trust

import (
	"fmt"
	"strings"
	"time"
)

// Image labels that carry versions.
const (
	// LabelVersion is the OCI annotation/label for an image's version.
	LabelVersion = "org.opencontainers.image.version"
	// LabelMinVersion is twinroot's signed floor: the lowest version that
	// may replace the image carrying it. It is a config label, so the
	// manifest digest, and with it any signature, covers it.
	LabelMinVersion = "io.twinroot.min-version"
)

// Version is what an image says about its age.
type Version struct {
	// Label is the org.opencontainers.image.version label ("" if none).
	Label string `json:"version,omitempty"`
	// Created is the image config's creation time (zero if none).
	Created time.Time `json:"created,omitzero"`
	// Floor is the io.twinroot.min-version label ("" if none).
	Floor string `json:"minVersion,omitempty"`
}

// VersionOf reads an image's version from its config labels and creation
// time.
func VersionOf(labels map[string]string, created time.Time) Version {
	return Version{
		Label:   strings.TrimSpace(labels[LabelVersion]),
		Created: created,
		Floor:   strings.TrimSpace(labels[LabelMinVersion]),
	}
}

// String is the version label, else the creation time, else "unknown".
func (v Version) String() string {
	switch {
	case v.Label != "":
		return v.Label
	case !v.Created.IsZero():
		return "created " + v.Created.UTC().Format(time.RFC3339)
	}
	return "unknown"
}

// Compare orders two image versions: by their version labels
// (CompareVersions) when both have one, else by creation time when both
// have one. ok is false when neither applies (nothing to compare).
func Compare(a, b Version) (c int, ok bool) {
	if a.Label != "" && b.Label != "" {
		return CompareVersions(a.Label, b.Label), true
	}
	if !a.Created.IsZero() && !b.Created.IsZero() {
		return a.Created.Compare(b.Created), true
	}
	return 0, false
}

// EffectiveFloor is the highest floor among the given images (the booted,
// staged and rollback deployments): the floor only ever rises, so
// replacing an image by one with a lower floor, or rolling back, does not
// reopen the door to a replayed old image.
func EffectiveFloor(vs ...Version) string {
	floor := ""
	for _, v := range vs {
		if v.Floor != "" && (floor == "" || CompareVersions(v.Floor, floor) > 0) {
			floor = v.Floor
		}
	}
	return floor
}

// CheckReplace decides whether candidate may replace current during an
// upgrade or switch. A candidate older than current (Compare < 0) is
// refused with ErrDowngrade unless allowDowngrade; a candidate whose
// version label is below floor (EffectiveFloor of the installed images),
// or that has no version label while a floor exists, is refused with
// ErrBelowFloor whatever allowDowngrade says. Rollback to an installed
// deployment is not a replacement and is never checked.
func CheckReplace(current, candidate Version, floor string, allowDowngrade bool) error {
	if floor != "" {
		if candidate.Label == "" {
			return fmt.Errorf("%w: the installed images require version >= %s (%s), the new image has no %s label",
				ErrBelowFloor, floor, LabelMinVersion, LabelVersion)
		}
		if CompareVersions(candidate.Label, floor) < 0 {
			return fmt.Errorf("%w: new image version %s is below the minimum %s that the installed images allow (%s)",
				ErrBelowFloor, candidate.Label, floor, LabelMinVersion)
		}
	}
	if c, ok := Compare(candidate, current); ok && c < 0 && !allowDowngrade {
		return fmt.Errorf("%w: new image version %s is older than the current %s (use --allow-downgrade, or rollback to return to an installed deployment)",
			ErrDowngrade, candidate, current)
	}
	return nil
}

// CompareVersions compares version strings the way rpm's rpmvercmp does,
// returning -1, 0 or 1. Both strings are split into runs of digits and runs
// of letters; everything else separates runs and is otherwise ignored. Runs
// are compared in order: two digit runs numerically (leading zeros
// dropped, any length), two letter runs by byte order, and a digit run is
// newer than a letter run. When all runs so far are equal, the string with
// more runs is newer, except that '~' sorts before everything, even the
// end of the string ("1.0~rc1" < "1.0"), and '^' sorts after the end but
// before any further run ("1.0" < "1.0^git1" < "1.0.1"). So "41.20260101.0"
// < "41.20260102.0", "1.9" < "1.10", "1.0a" < "1.0.1" and "v2" == "v2".
func CompareVersions(a, b string) int {
	if a == b {
		return 0
	}
	isAlnum := func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	for {
		for len(a) > 0 && !isAlnum(a[0]) && a[0] != '~' && a[0] != '^' {
			a = a[1:]
		}
		for len(b) > 0 && !isAlnum(b[0]) && b[0] != '~' && b[0] != '^' {
			b = b[1:]
		}
		// Tilde: older than anything, including the end.
		if len(a) > 0 && a[0] == '~' || len(b) > 0 && b[0] == '~' {
			if len(a) == 0 || a[0] != '~' {
				return 1
			}
			if len(b) == 0 || b[0] != '~' {
				return -1
			}
			a, b = a[1:], b[1:]
			continue
		}
		// Caret: newer than the end, older than any further run.
		if len(a) > 0 && a[0] == '^' || len(b) > 0 && b[0] == '^' {
			if len(a) == 0 {
				return -1
			}
			if len(b) == 0 {
				return 1
			}
			if a[0] != '^' {
				return 1
			}
			if b[0] != '^' {
				return -1
			}
			a, b = a[1:], b[1:]
			continue
		}
		if len(a) == 0 || len(b) == 0 {
			break
		}
		numeric := isDigit(a[0])
		run := func(s string) (string, string) {
			i := 0
			for i < len(s) && (numeric && isDigit(s[i]) || !numeric && isAlnum(s[i]) && !isDigit(s[i])) {
				i++
			}
			return s[:i], s[i:]
		}
		var ra, rb string
		ra, a = run(a)
		rb, b = run(b)
		if rb == "" { // different kinds: digits are newer
			if numeric {
				return 1
			}
			return -1
		}
		if numeric {
			ra, rb = strings.TrimLeft(ra, "0"), strings.TrimLeft(rb, "0")
			if len(ra) != len(rb) {
				if len(ra) > len(rb) {
					return 1
				}
				return -1
			}
		}
		if c := strings.Compare(ra, rb); c != 0 {
			return c
		}
	}
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return -1
	}
	return 1
}
