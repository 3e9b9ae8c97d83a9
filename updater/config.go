package updater

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
)

// DefaultConfigPath is where the service and updatectl read their
// configuration. No file is needed: every key has a default.
const DefaultConfigPath = "/etc/twinroot/config.toml"

// Auto-apply policies (rpm-ostreed.conf's AutomaticUpdatePolicy).
const (
	PolicyNone  = "none"  // the service only checks and logs
	PolicyStage = "stage" // the service downloads and stages; the switch happens at the next reboot
	PolicyApply = "apply" // the service stages and reboots at once
)

// Verity policies, passed to the kernel as twinroot.verity=.
const (
	VerityIfSupported = "if-supported"
	VerityRequire     = "require"
)

// Config is /etc/twinroot/config.toml.
//
//	[update]
//	origin = "docker://registry.example/os/debian-bootc:stable" # default: the booted deployment's origin
//	auto-apply = "stage"                                        # none | stage | apply
//	enforce-container-sigpolicy = false                         # refuse images policy.json does not verify
//	[boot]
//	verity = "if-supported"                                     # if-supported | require
//	kargs = ["console=ttyS0"]                                   # extra kernel arguments for new deployments
//	root = "UUID=..."                                           # root= of new entries; default: the sysroot's file system
//	[storage]
//	containers = "/var/lib/containers/storage"                  # container storage to share files with ("" = none)
type Config struct {
	Update  UpdateConfig  `toml:"update"`
	Boot    BootConfig    `toml:"boot"`
	Storage StorageConfig `toml:"storage"`
}

// UpdateConfig is the [update] table.
type UpdateConfig struct {
	// Origin overrides the reference upgrades follow ("" = the booted
	// deployment's origin).
	Origin string `toml:"origin"`
	// AutoApply is what twinroot-update.service does with an update:
	// none, stage (default) or apply.
	AutoApply string `toml:"auto-apply"`
	// EnforceContainerSigpolicy refuses images that containers-policy.json
	// accepts without verifying a signature (bootc's
	// --enforce-container-sigpolicy; the flag overrides it).
	EnforceContainerSigpolicy bool `toml:"enforce-container-sigpolicy"`
}

// BootConfig is the [boot] table.
type BootConfig struct {
	// Verity is the twinroot.verity= policy of new entries (default
	// if-supported).
	Verity string `toml:"verity"`
	// Kargs are extra kernel arguments for new deployments.
	Kargs []string `toml:"kargs"`
	// Root is the root= value of new entries (default: UUID= of the
	// sysroot's file system, found through /dev/disk/by-uuid).
	Root string `toml:"root"`
}

// StorageConfig is the [storage] table.
type StorageConfig struct {
	// Containers is container storage's graph root, whose files the store
	// shares after each upgrade, as a path under the sysroot (the
	// persistent /var is <sysroot>/var): default
	// /var/lib/containers/storage; "" disables sharing.
	Containers string `toml:"containers"`
}

// DefaultConfig is the configuration when no file exists.
func DefaultConfig() Config {
	return Config{
		Update:  UpdateConfig{AutoApply: PolicyStage},
		Boot:    BootConfig{Verity: VerityIfSupported},
		Storage: StorageConfig{Containers: "/var/lib/containers/storage"},
	}
}

// ParseConfig parses config.toml over the defaults. Unknown keys and bad
// values are errors naming the key, so a typo never silently does nothing.
func ParseConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		keys := make([]string, len(u))
		for i, k := range u {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("%w: unknown keys %s", ErrConfig, strings.Join(keys, ", "))
	}
	if !slices.Contains([]string{PolicyNone, PolicyStage, PolicyApply}, c.Update.AutoApply) {
		return Config{}, fmt.Errorf("%w: update.auto-apply = %q: want none, stage or apply", ErrConfig, c.Update.AutoApply)
	}
	if !slices.Contains([]string{VerityIfSupported, VerityRequire}, c.Boot.Verity) {
		return Config{}, fmt.Errorf("%w: boot.verity = %q: want if-supported or require", ErrConfig, c.Boot.Verity)
	}
	for _, k := range c.Boot.Kargs {
		if k == "" || strings.ContainsAny(k, " \t\n") || strings.HasPrefix(k, "twinroot=") {
			return Config{}, fmt.Errorf("%w: boot.kargs: %q is not one kernel argument (twinroot= is set by twinroot)", ErrConfig, k)
		}
	}
	return c, nil
}

// LoadConfig reads path; a missing file gives the defaults.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultConfig(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}
