package boot

import (
	"cmp"
	"strings"
)

// versionCompare orders version strings the way systemd's
// strverscmp_improved does in essence: runs of digits compare as numbers,
// other characters by byte, '~' before everything (even the end), '-' and
// '^' as separators. It is used for kernel versions and for the tie-breaks
// of entry ordering.
func versionCompare(a, b string) int {
	for {
		// Skip separators that are not letters or digits, except ~ - ^ .
		a = strings.TrimLeftFunc(a, isOther)
		b = strings.TrimLeftFunc(b, isOther)
		if strings.HasPrefix(a, "~") || strings.HasPrefix(b, "~") {
			if !strings.HasPrefix(a, "~") {
				return 1
			}
			if !strings.HasPrefix(b, "~") {
				return -1
			}
			a, b = a[1:], b[1:]
			continue
		}
		if a == "" || b == "" {
			return cmp.Compare(len(a), len(b))
		}
		for _, sep := range []byte{'-', '^', '.'} {
			sa, sb := a[0] == sep, b[0] == sep
			if sa != sb {
				if sa {
					return 1
				}
				return -1
			}
			if sa {
				a, b = a[1:], b[1:]
			}
		}
		if a == "" || b == "" {
			return cmp.Compare(len(a), len(b))
		}
		da, db := isDigit(a[0]), isDigit(b[0])
		if da != db {
			if da {
				return 1
			}
			return -1
		}
		if da {
			ra, rb := leadingRun(a, isDigit), leadingRun(b, isDigit)
			na, nb := strings.TrimLeft(ra, "0"), strings.TrimLeft(rb, "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[len(ra):], b[len(rb):]
			continue
		}
		ra, rb := leadingRun(a, isAlpha), leadingRun(b, isAlpha)
		if c := strings.Compare(ra, rb); c != 0 {
			return c
		}
		a, b = a[len(ra):], b[len(rb):]
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func isOther(r rune) bool {
	if r > 127 {
		return false
	}
	c := byte(r)
	return !isDigit(c) && !isAlpha(c) && c != '~' && c != '-' && c != '^' && c != '.'
}

func leadingRun(s string, f func(byte) bool) string {
	i := 0
	for i < len(s) && f(s[i]) {
		i++
	}
	return s[:i]
}

// compareEntries orders two entries as systemd-boot does (boot.c,
// boot_entry_compare): entries with no tries left last; entries with a
// sort-key before those without; then sort-key ascending, machine-id
// ascending, version descending; then the file name without its counter
// descending; then more tries left first, fewer tries done first.
func compareEntries(na EntryName, ea Entry, nb EntryName, eb Entry) int {
	if c := cmpBool(na.Exhausted(), nb.Exhausted()); c != 0 {
		return c
	}
	ka, hasA := ea.Get("sort-key")
	kb, hasB := eb.Get("sort-key")
	if c := cmpBool(!hasA, !hasB); c != 0 {
		return c
	}
	if hasA && hasB {
		if c := strings.Compare(ka, kb); c != 0 {
			return c
		}
		ma, _ := ea.Get("machine-id")
		mb, _ := eb.Get("machine-id")
		if c := strings.Compare(ma, mb); c != 0 {
			return c
		}
		va, _ := ea.Get("version")
		vb, _ := eb.Get("version")
		if c := -versionCompare(va, vb); c != 0 {
			return c
		}
	}
	if c := -versionCompare(na.Base, nb.Base); c != 0 {
		return c
	}
	if !na.Counted || !nb.Counted {
		return 0
	}
	if c := -cmp.Compare(na.Left, nb.Left); c != 0 {
		return c
	}
	return cmp.Compare(na.Done, nb.Done)
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
