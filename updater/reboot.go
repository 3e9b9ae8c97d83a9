package updater

import (
	"context"
	"fmt"
	"os/exec"

	"github.com/coreos/go-systemd/v22/login1"
)

// Reboot asks logind to reboot (org.freedesktop.login1.Manager.Reboot,
// the way systemctl does it for an unprivileged caller with polkit), and
// falls back to "systemctl reboot" when logind cannot be reached.
func Reboot(ctx context.Context) error {
	c, err := login1.New()
	if err == nil {
		defer c.Close()
		c.Reboot(false)
		return nil
	}
	out, err2 := exec.CommandContext(ctx, "systemctl", "reboot").CombinedOutput()
	if err2 != nil {
		return fmt.Errorf("updater: reboot: logind: %w; systemctl reboot: %w: %s", err, err2, out)
	}
	return nil
}
