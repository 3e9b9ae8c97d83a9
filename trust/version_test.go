package trust

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCompareVersions(t *testing.T) {
	// Cases from rpm's rpmvercmp test suite (tests/rpmvercmp.at) and a few
	// OS image version schemes.
	cases := []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0}, {"1.0", "2.0", -1}, {"2.0", "1.0", 1},
		{"2.0.1", "2.0.1", 0}, {"2.0", "2.0.1", -1}, {"2.0.1a", "2.0.1a", 0},
		{"2.0.1a", "2.0.1", 1}, {"5.5p1", "5.5p1", 0}, {"5.5p1", "5.5p2", -1},
		{"5.5p10", "5.5p1", 1}, {"10xyz", "10.1xyz", -1}, {"xyz10", "xyz10.1", -1},
		{"xyz.4", "xyz.4", 0}, {"xyz.4", "8", -1}, {"8", "xyz.4", 1},
		{"5.5p1", "5.5.p1", 0}, {"5.6p1", "5.5p1", 1},
		{"6.0.rc1", "6.0", 1}, {"10b2", "10a1", 1}, {"1.0aa", "1.0a", 1},
		{"10.0001", "10.1", 0}, {"10.0001", "10.0039", -1}, {"4.999.9", "5.0", -1},
		{"20101121", "20101122", -1}, {"2_0", "2_0", 0}, {"2.0", "2_0", 0},
		{"a", "a", 0}, {"a+", "a+", 0}, {"a+", "a_", 0}, {"+a", "_a", 0}, {"+_", "_+", 0}, {"+", "_", 0},
		{"1.0~rc1", "1.0~rc1", 0}, {"1.0~rc1", "1.0", -1}, {"1.0", "1.0~rc1", 1},
		{"1.0~rc1", "1.0~rc2", -1}, {"1.0~rc1~git123", "1.0~rc1", -1},
		{"1.0^", "1.0^", 0}, {"1.0^", "1.0", 1}, {"1.0", "1.0^", -1},
		{"1.0^git1", "1.0^git2", -1}, {"1.0^git1", "1.01", -1}, {"1.0^20160101", "1.0.1", -1},
		{"1.0~rc1^git1", "1.0~rc1", 1}, {"1.0^git1~pre", "1.0^git1", -1},
		{"1.9", "1.10", -1}, {"41.20260101.0", "41.20260102.0", -1}, {"v2", "v2", 0},
		{"1.0a", "1.0.1", -1}, {"99999999999999999999999", "99999999999999999999998", 1},
	}
	for _, tc := range cases {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := CompareVersions(tc.b, tc.a); got != -tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d (antisymmetry)", tc.b, tc.a, got, -tc.want)
		}
	}
}

func FuzzCompareVersions(f *testing.F) {
	f.Add("1.0~rc1", "1.0^git", "1.0.1")
	f.Add("1.0a", "1.0", "1.0~")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		if CompareVersions(a, b) != -CompareVersions(b, a) {
			t.Fatalf("not antisymmetric: %q %q", a, b)
		}
		if CompareVersions(a, a) != 0 {
			t.Fatalf("not reflexive: %q", a)
		}
		if CompareVersions(a, b) <= 0 && CompareVersions(b, c) <= 0 && CompareVersions(a, c) > 0 {
			t.Fatalf("not transitive: %q <= %q <= %q but %q > %q", a, b, c, a, c)
		}
	})
}

func TestCheckReplace(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v := func(label, floor string, created time.Time) Version {
		return VersionOf(map[string]string{LabelVersion: label, LabelMinVersion: floor}, created)
	}
	cases := []struct {
		name           string
		cur, cand      Version
		floor          string
		allow          bool
		want           error
		wantInMessages []string
	}{
		{"newer label", v("41.1", "", t0), v("41.2", "", t0), "", false, nil, nil},
		{"same", v("41.1", "", t0), v("41.1", "", t0), "", false, nil, nil},
		{"older label", v("41.10", "", t0), v("41.9", "", t0.Add(time.Hour)), "", false, ErrDowngrade, []string{"41.9", "41.10"}},
		{"older allowed", v("41.10", "", t0), v("41.9", "", t0), "", true, nil, nil},
		{"older by time", v("", "", t0), v("", "", t0.Add(-time.Hour)), "", false, ErrDowngrade, []string{"created 2025-12-31T23:00:00Z", "created 2026-01-01T00:00:00Z"}},
		{"newer by time", v("", "", t0), v("", "", t0.Add(time.Hour)), "", false, nil, nil},
		{"one label: by time", v("9", "", t0), v("", "", t0.Add(time.Hour)), "", false, nil, nil},
		{"nothing to compare", v("", "", time.Time{}), v("1", "", time.Time{}), "", false, nil, nil},
		{"below floor", v("3", "2", t0), v("1", "", t0), "2", true, ErrBelowFloor, []string{"1", "minimum 2"}},
		{"at floor, downgrade allowed", v("3", "2", t0), v("2", "", t0), "2", true, nil, nil},
		{"at floor, downgrade refused", v("3", "2", t0), v("2", "", t0), "2", false, ErrDowngrade, nil},
		{"floor, no label", v("3", "2", t0), v("", "", t0.Add(time.Hour)), "2", false, ErrBelowFloor, nil},
	}
	for _, tc := range cases {
		err := CheckReplace(tc.cur, tc.cand, tc.floor, tc.allow)
		if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			continue
		}
		for _, s := range tc.wantInMessages {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not name %q", tc.name, err, s)
			}
		}
	}
}

func TestEffectiveFloor(t *testing.T) {
	vs := []Version{{Floor: "1.9"}, {}, {Floor: "1.10"}, {Floor: "1.2"}}
	if got := EffectiveFloor(vs...); got != "1.10" {
		t.Errorf("floor %q, want 1.10", got)
	}
	if got := EffectiveFloor(); got != "" {
		t.Errorf("floor of nothing %q", got)
	}
}

func TestScopeFor(t *testing.T) {
	pol := map[string]map[string]bool{
		"docker": {"": true, "quay.io": true, "quay.io/org": true, "quay.io/org/os:stable": true},
		"oci":    {"/srv": true},
	}
	has := func(tr, s string) bool { return pol[tr][s] }
	hasT := func(tr string) bool { _, ok := pol[tr]; return ok }
	cases := []struct{ tr, id, wantT, wantS string }{
		{"docker", "quay.io/org/os:stable", "docker", "quay.io/org/os:stable"},
		{"docker", "quay.io/org/os:next", "docker", "quay.io/org"},
		{"docker", "quay.io/other/os:1", "docker", "quay.io"},
		{"docker", "example.com/x:1", "docker", ""},
		{"oci", "/srv/img:1", "oci", "/srv"},
		{"oci", "/tmp/img:1", "", ""},
		{"oci-archive", "/srv/a.tar", "", ""},
	}
	for _, tc := range cases {
		var ns []string
		for s := tc.id; ; {
			i := strings.LastIndexAny(s, "/:")
			if i < 0 {
				break
			}
			s = s[:i]
			ns = append(ns, s)
		}
		tr, s := scopeFor(has, hasT, tc.tr, tc.id, ns)
		if tr != tc.wantT || s != tc.wantS {
			t.Errorf("%s %s: entry %s, want %s", tc.tr, tc.id, entryName(tr, s), entryName(tc.wantT, tc.wantS))
		}
	}
}
