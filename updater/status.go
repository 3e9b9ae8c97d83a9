package updater

import (
	"context"
	"fmt"
	"os"

	"github.com/twinroot/twinroot/boot"
	"github.com/twinroot/twinroot/deploy"
)

// Status reports the booted, staged, rollback and default deployments and
// the store's usage. It takes no lock (see open).
func Status(ctx context.Context, o Options) (Host, error) {
	u, err := open(ctx, o, "status", false, true)
	if err != nil {
		return Host{}, err
	}
	defer u.Close()
	st, err := u.state(ctx)
	if err != nil {
		return Host{}, err
	}
	return u.host(ctx, st)
}

// state is what the operations decide from: deployments by id, the
// committed and staged boot entries, and the roles.
type state struct {
	deps    map[string]deploy.Deployment
	order   []deploy.Deployment // by creation
	entries []boot.InstalledEntry
	staged  []boot.InstalledEntry
	booted  string // ids; "" when none
	stagedD string
	def     string
	rollbk  string
	warn    []string
}

// state reads deployments, boot entries and the kernel command line.
func (u *Updater) state(ctx context.Context) (*state, error) {
	list, err := u.dep.List(ctx)
	if err != nil {
		return nil, friendly(err)
	}
	s := &state{deps: map[string]deploy.Deployment{}, order: list}
	for _, d := range list {
		s.deps[d.ID] = d
	}
	if s.entries, err = u.boot.Entries(ctx); err != nil {
		return nil, friendly(err)
	}
	staged, ok, err := u.boot.Staged(ctx)
	if err != nil {
		return nil, friendly(err)
	}
	if ok {
		s.staged = staged
	}
	b, err := u.booted()
	if err != nil {
		return nil, err
	}
	if b.Found {
		d, ok := s.deps[b.Arg.ID]
		switch {
		case !ok:
			s.warn = append(s.warn, fmt.Sprintf("the kernel command line names deployment %s, which this sysroot does not have", b.Arg.ID))
		case d.Image != b.Arg.Image:
			s.warn = append(s.warn, fmt.Sprintf("the kernel command line names deployment %s with image %s, but it holds %s", b.Arg.ID, b.Arg.Image.Hex(), d.Image.Hex()))
		default:
			s.booted = d.ID
			if u.o.Cmdline == nil && !b.Mounted {
				s.warn = append(s.warn, fmt.Sprintf("booted deployment %s: the root file system is not mounted from its image", d.ID))
			}
		}
	}
	if len(s.entries) > 0 {
		s.def = s.entries[0].ID
	}
	if len(s.entries) > 1 {
		s.rollbk = s.entries[1].ID
	}
	if len(s.staged) > 0 && s.staged[0].ID != s.def {
		// A set staged in an earlier boot is dropped by finalize: it is
		// not staged, and an upgrade stages the update again.
		ok, err := u.stagedThisBoot(s.staged[0].ID)
		if err != nil {
			return nil, err
		}
		if ok {
			s.stagedD = s.staged[0].ID
		} else {
			s.warn = append(s.warn, fmt.Sprintf("the staged entries for %s were made during an earlier boot; finalize discards them, and the next upgrade stages the update again", s.staged[0].ID))
		}
	}
	for _, w := range s.warn {
		u.o.Log.Warn(w)
	}
	return s, nil
}

// booted reads the command line (the test hook, else /proc/cmdline) and
// the mount table.
func (u *Updater) booted() (bootedArg, error) {
	if u.o.Cmdline != nil {
		return parseBooted(*u.o.Cmdline, nil)
	}
	cl, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return bootedArg{}, fmt.Errorf("updater: %w", err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return bootedArg{}, fmt.Errorf("updater: %w", err)
	}
	return parseBooted(string(cl), mi)
}

// origin is what upgrades follow: the config's origin, else the staged
// deployment's (a switch sets it), else the booted one's, else the
// default one's. base is the deployment a new one merges /etc from and
// falls back to.
func (s *state) origin(c Config) (ref string, base *deploy.Deployment) {
	base = s.base()
	if c.Update.Origin != "" {
		return c.Update.Origin, base
	}
	if d, ok := s.deps[s.stagedD]; ok && s.stagedD != "" {
		return d.Origin.Ref, base
	}
	if base != nil {
		return base.Origin.Ref, base
	}
	return "", nil
}

// base is the deployment whose /etc a new deployment merges and that
// becomes its fallback: the booted one, else the default one.
func (s *state) base() *deploy.Deployment {
	for _, id := range []string{s.booted, s.def} {
		if d, ok := s.deps[id]; ok && id != "" {
			return &d
		}
	}
	return nil
}

func (u *Updater) host(ctx context.Context, s *state) (Host, error) {
	h := Host{APIVersion: APIVersion, Kind: KindHost, Status: HostStatus{Other: []BootEntry{}}}
	if ref, _ := s.origin(u.o.Config); ref != "" {
		h.Spec.Image = &ImageReference{Image: ref}
	}
	entryOf := map[string]boot.InstalledEntry{}
	for _, e := range s.staged {
		entryOf[e.ID] = e
	}
	for _, e := range s.entries {
		entryOf[e.ID] = e // the committed entry wins over a staged copy
	}
	one := func(id string) *BootEntry {
		d, ok := s.deps[id]
		if id == "" || !ok {
			return nil
		}
		e := bootEntry(d)
		if p, ok := u.provenance(ctx, d); ok {
			e.Image.Signature = signatureStatus(p)
			e.Image.MinVersion = p.Version.Floor
		}
		if ie, ok := entryOf[id]; ok {
			e.Boot = bootStatus(ie)
		}
		return &e
	}
	h.Status.Booted = one(s.booted)
	h.Status.Staged = one(s.stagedD)
	h.Status.Rollback = one(s.rollbk)
	h.Status.Default = one(s.def)
	for _, d := range s.order {
		if d.ID != s.booted && d.ID != s.stagedD && d.ID != s.rollbk && d.ID != s.def {
			h.Status.Other = append(h.Status.Other, *one(d.ID))
		}
	}
	st, err := u.store.Stats(ctx)
	if err != nil {
		return Host{}, err
	}
	imgs, err := u.store.Images(ctx)
	if err != nil {
		return Host{}, err
	}
	h.Status.Store = StoreStatus{
		Path: u.store.Root(), Objects: st.Objects, Bytes: st.Bytes, SharedBytes: st.SharedBytes,
		GarbageBytes: st.GarbageBytes, Images: len(imgs), Verity: u.store.VeritySupported(),
	}
	return h, nil
}

func bootEntry(d deploy.Deployment) BootEntry {
	e := BootEntry{
		ID: d.ID,
		Image: ImageStatus{
			Image:           ImageReference{Image: d.Origin.Ref},
			ManifestDigest:  d.Origin.Manifest,
			ComposefsDigest: d.Image.Hex(),
			Version:         d.Origin.Version,
			OS:              d.OSRelease["PRETTY_NAME"],
		},
		Pinned:    d.Pinned,
		Conflicts: []EtcConflict{},
		Deployed:  d.Created.UTC(),
	}
	if !d.Origin.Created.IsZero() {
		t := d.Origin.Created.UTC()
		e.Image.Timestamp = &t
	}
	for _, c := range d.Conflicts {
		e.Conflicts = append(e.Conflicts, EtcConflict{Path: c.Path, Reason: c.Reason})
	}
	return e
}

func bootStatus(ie boot.InstalledEntry) *BootStatus {
	b := &BootStatus{Entry: ie.File, Blessed: ie.Name.Blessed()}
	b.Linux, _ = ie.Entry.Get("linux")
	if ie.Name.Counted {
		left, done := ie.Name.Left, ie.Name.Done
		b.TriesLeft, b.TriesDone = &left, &done
	}
	return b
}
