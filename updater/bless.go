package updater

import "context"

// Bless marks the booted boot entry good (its boot counter removed), as
// systemd-bless-boot does; twinroot-bless-boot.service runs it after
// boot-complete.target where systemd's own service is missing.
func Bless(ctx context.Context, o Options) error {
	u, err := open(ctx, o, "bless", false, false)
	if err != nil {
		return err
	}
	defer u.Close()
	return friendly(u.boot.Bless(ctx))
}
