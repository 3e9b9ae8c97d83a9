package updater

import (
	"time"

	twsync "github.com/twinroot/twinroot/sync"
)

// This file is the whole machine-readable API of "updatectl status --json"
// (and of the other verbs' --json results): the types below, their JSON
// names and the schema version. docs/status.schema.json is generated from
// these types (TestSchemaUpToDate fails when they drift apart) and every
// test's JSON output is validated against it. The shape follows bootc's
// Host (crates/lib/src/spec.rs): apiVersion, kind, spec, status with
// booted, staged and rollback.
//
// Compatibility: within one APIVersion fields are only ever added, never
// renamed, retyped or removed; consumers must ignore fields they do not
// know. A change that breaks that rule bumps APIVersion.

// APIVersion is the schema version of Host.
const APIVersion = "org.twinroot/v1"

// KindHost is Host's kind.
const KindHost = "Host"

// Host is the state of one system: what it follows and what it boots.
type Host struct {
	APIVersion string     `json:"apiVersion"` // APIVersion
	Kind       string     `json:"kind"`       // KindHost
	Spec       HostSpec   `json:"spec"`
	Status     HostStatus `json:"status"`
}

// HostSpec is what the system is asked to follow.
type HostSpec struct {
	// Image is the origin upgrades follow: the booted deployment's (or,
	// not booted from twinroot, the default deployment's) reference; null
	// when there is no deployment.
	Image *ImageReference `json:"image"`
}

// ImageReference names an image the way the user gave it.
type ImageReference struct {
	// Image is the reference: docker://host/repo:tag, oci:DIR:tag or
	// oci-archive:FILE:tag.
	Image string `json:"image"`
}

// HostStatus is what the system boots. Booted, Staged, Rollback and Default
// are null when there is no such deployment.
type HostStatus struct {
	// Booted is the running deployment, found from the kernel command line
	// (twinroot=<id>:<digest>) and checked against the mount table.
	Booted *BootEntry `json:"booted"`
	// Staged is the deployment an upgrade staged: it becomes the default
	// at shutdown (finalize), with the booted one as its fallback.
	Staged *BootEntry `json:"staged"`
	// Rollback is the deployment the boot loader falls back to, and that
	// "updatectl rollback" makes the default.
	Rollback *BootEntry `json:"rollback"`
	// Default is the first entry of the committed boot set: what boots
	// next when nothing is staged. Often the same deployment as Booted.
	Default *BootEntry `json:"default"`
	// Other lists deployments in no role above (gc removes them unless
	// pinned).
	Other []BootEntry `json:"other"`
	// Store is the object store's usage.
	Store StoreStatus `json:"store"`
}

// BootEntry is one deployment and its boot entry.
type BootEntry struct {
	// ID is the deployment id (<12 hex of the image digest>.<n>).
	ID string `json:"id"`
	// Image describes the image it was made from.
	Image ImageStatus `json:"image"`
	// Pinned deployments are kept by gc whatever their role.
	Pinned bool `json:"pinned"`
	// Boot is its boot entry; null when no entry names the deployment.
	Boot *BootStatus `json:"boot"`
	// Conflicts are the /etc paths where the three-way merge kept the
	// local version over a changed image version.
	Conflicts []EtcConflict `json:"conflicts"`
	// Deployed is when the deployment was created.
	Deployed time.Time `json:"deployed"`
}

// ImageStatus is an image's identity and labels.
type ImageStatus struct {
	// Image is the reference the deployment was made from (its origin).
	Image ImageReference `json:"image"`
	// ManifestDigest is the OCI manifest digest (sha256:...); empty for an
	// image not pulled from a registry or layout.
	ManifestDigest string `json:"manifestDigest"`
	// ComposefsDigest is the composefs EROFS image's fs-verity digest
	// (hex), the value in twinroot=<id>:<digest>.
	ComposefsDigest string `json:"composefsDigest"`
	// Version is the org.opencontainers.image.version label ("" if none).
	Version string `json:"version"`
	// Timestamp is the image config's creation time (null if unknown).
	Timestamp *time.Time `json:"timestamp"`
	// OS is PRETTY_NAME from the image's os-release ("" if none).
	OS string `json:"os"`
	// MinVersion is the image's signed floor (label io.twinroot.min-version):
	// upgrades refuse images older than it ("" if none).
	MinVersion string `json:"minVersion"`
	// Signature is how containers-policy.json judged the image when it was
	// pulled; null when nothing was recorded (an imported image).
	Signature *SignatureStatus `json:"signature"`
}

// SignatureStatus is the signature policy's verdict on an image at pull
// time.
type SignatureStatus struct {
	// Verified is true when the policy entry verified a signature
	// (signedBy, sigstoreSigned); false when it accepted the image without
	// (insecureAcceptAnything).
	Verified bool `json:"verified"`
	// PolicyEntry names the entry that applied, as in policy.json:
	// transports.docker."quay.io/org", transports.oci."", or default.
	PolicyEntry string `json:"policyEntry"`
	// Requirements are the entry's requirement types, in order.
	Requirements []string `json:"requirements"`
	// Policy is the policy file ("" when none existed: insecureAcceptAnything).
	Policy string `json:"policy"`
	// ManifestDigest is the digest the signatures were checked against:
	// the top-level manifest (an index when the image came from one).
	ManifestDigest string `json:"manifestDigest"`
}

// BootStatus is a deployment's boot loader entry.
type BootStatus struct {
	// Entry is the entry file name under loader/entries (or
	// loader/entries.staged), boot counter included.
	Entry string `json:"entry"`
	// TriesLeft is the boot counter's remaining tries; null when the entry
	// does not count (blessed, or never counted).
	TriesLeft *int `json:"triesLeft"`
	// TriesDone is the number of failed tries so far (null as TriesLeft).
	TriesDone *int `json:"triesDone"`
	// Blessed is true when the entry has no boot counter: it booted well
	// (systemd-bless-boot or "updatectl bless" removed the counter) or it
	// was installed blessed.
	Blessed bool `json:"blessed"`
	// Linux is the kernel the entry boots, as a path on the boot
	// partition (named by the kernel's content digest).
	Linux string `json:"linux"`
}

// EtcConflict is one /etc path the merge could not reconcile.
type EtcConflict struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// StoreStatus is the object store's usage.
type StoreStatus struct {
	// Path is the store root.
	Path string `json:"path"`
	// Objects and Bytes count the shared object index.
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// SharedBytes are bytes of objects container storage also links.
	SharedBytes int64 `json:"sharedBytes"`
	// GarbageBytes are bytes of objects no image references (gc frees them).
	GarbageBytes int64 `json:"garbageBytes"`
	// Images is the number of composefs images.
	Images int `json:"images"`
	// Verity tells whether the store's filesystem has fs-verity.
	Verity bool `json:"verity"`
}

// CheckResult is the answer of "upgrade --check".
type CheckResult struct {
	APIVersion string `json:"apiVersion"` // APIVersion
	Kind       string `json:"kind"`       // "CheckResult"
	// Image is the reference checked.
	Image ImageReference `json:"image"`
	// Available is true when the reference names a manifest that is
	// neither booted nor staged.
	Available bool `json:"available"`
	// Current is the manifest digest of the booted (or default)
	// deployment; Staged that of a staged one ("" when none).
	Current string `json:"current"`
	Staged  string `json:"staged"`
	// Latest is what the reference names now.
	Latest ImageStatus `json:"latest"`
	// Refused says why upgrade would refuse Latest (an older version
	// than the booted one, or one below the installed floor); Available
	// is false then. "" when it would take it.
	Refused string `json:"refused,omitempty"`
}

// Result is the outcome of a state-changing verb (upgrade, switch,
// rollback, finalize, gc, install).
type Result struct {
	APIVersion string `json:"apiVersion"` // APIVersion
	Kind       string `json:"kind"`       // "Result"
	// Verb is the operation: upgrade, switch, rollback, finalize, gc, install.
	Verb string `json:"verb"`
	// Changed is false when there was nothing to do.
	Changed bool `json:"changed"`
	// Message is a one-line human summary.
	Message string `json:"message"`
	// Deployment is the deployment created, staged or made default ("" if none).
	Deployment string `json:"deployment"`
	// RebootNeeded is true when the change takes effect at the next boot.
	RebootNeeded bool `json:"rebootNeeded"`
	// Removed lists what gc, or the prune after an upgrade or switch,
	// removed: "deployment <id>", "image <hex>", "boot <file>".
	Removed []string `json:"removed"`
	// FreedBytes is what gc, or the prune after an upgrade or switch,
	// freed in the store.
	FreedBytes int64 `json:"freedBytes"`
	// Conflicts are /etc merge conflicts of the deployment made.
	Conflicts []EtcConflict `json:"conflicts"`
}

// Event is one progress report of a long operation, printed as a JSON
// line with --json. Pull events (Phase "pull") carry the sync event.
type Event struct {
	Kind  string `json:"kind"`  // "Event"
	Phase string `json:"phase"` // "resolve", "pull", "deploy", "kernel", "stage", "finalize", "gc", "lock"
	// Message is a human line for the journal and plain terminals.
	Message string `json:"message"`
	// Pull is the sync progress event during Phase "pull".
	Pull *twsync.Event `json:"pull,omitempty"`
}
