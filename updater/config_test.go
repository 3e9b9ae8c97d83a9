package updater

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want func(*Config)
		err  bool
	}{
		{"empty is the defaults", "", func(*Config) {}, false},
		{"all keys", `
[update]
origin = "docker://reg.example/os:stable"
auto-apply = "apply"
[boot]
verity = "require"
kargs = ["console=ttyS0", "quiet"]
[storage]
containers = ""
`, func(c *Config) {
			c.Update = UpdateConfig{Origin: "docker://reg.example/os:stable", AutoApply: PolicyApply}
			c.Boot = BootConfig{Verity: VerityRequire, Kargs: []string{"console=ttyS0", "quiet"}}
			c.Storage.Containers = ""
		}, false},
		{"unknown key", "[update]\nauto_apply = \"none\"\n", nil, true},
		{"bad policy", "[update]\nauto-apply = \"always\"\n", nil, true},
		{"bad verity", "[boot]\nverity = \"off\"\n", nil, true},
		{"karg with a space", "[boot]\nkargs = [\"a b\"]\n", nil, true},
		{"twinroot= karg", "[boot]\nkargs = [\"twinroot=x\"]\n", nil, true},
		{"not toml", "[update\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tc.in))
			if tc.err {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("err = %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := DefaultConfig()
			tc.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	c, err := LoadConfig(filepath.Join(t.TempDir(), "none.toml"))
	if err != nil || !reflect.DeepEqual(c, DefaultConfig()) {
		t.Errorf("LoadConfig(missing) = %+v, %v; want the defaults", c, err)
	}
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("[boot]\nverity = 1\n"), 0o644)
	if _, err := LoadConfig(p); !errors.Is(err, ErrConfig) {
		t.Errorf("LoadConfig(bad) = %v, want ErrConfig", err)
	}
}
