package sync

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// POSIX ACL xattr encoding (linux/posix_acl_xattr.h).
const (
	aclVersion  = 2
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclGroup    = 0x08
	aclMask     = 0x10
	aclOther    = 0x20
	aclNoID     = math.MaxUint32
)

// aclFromText converts an ACL in the text form tar archivers (star,
// bsdtar) write into PAX records, e.g.
// "user::rwx,user:alice:r--:1000,group::r-x,mask::r-x,other::r--",
// into the binary value of a system.posix_acl_* xattr. A named entry needs
// a numeric id: either the qualifier itself or star's trailing id field;
// names cannot be resolved here (the image's passwd is not the host's).
func aclFromText(text string) ([]byte, error) {
	type ace struct {
		tag  uint16
		perm uint16
		id   uint32
	}
	var aces []ace
	for _, f := range strings.FieldsFunc(text, func(r rune) bool { return r == ',' || r == '\n' }) {
		f = strings.TrimSpace(f)
		if f == "" || strings.HasPrefix(f, "#") {
			continue
		}
		parts := strings.Split(f, ":")
		if len(parts) < 3 || len(parts) > 4 {
			return nil, fmt.Errorf("%w: entry %q", errBadACL, f)
		}
		var a ace
		named := parts[1] != ""
		switch parts[0] {
		case "user", "u":
			a.tag = aclUserObj
			if named {
				a.tag = aclUser
			}
		case "group", "g":
			a.tag = aclGroupObj
			if named {
				a.tag = aclGroup
			}
		case "mask", "m":
			a.tag = aclMask
		case "other", "o":
			a.tag = aclOther
		default:
			return nil, fmt.Errorf("%w: tag in %q", errBadACL, f)
		}
		if (a.tag == aclMask || a.tag == aclOther) && named {
			return nil, fmt.Errorf("%w: qualifier in %q", errBadACL, f)
		}
		perm := parts[2]
		if len(perm) != 3 {
			return nil, fmt.Errorf("%w: permissions in %q", errBadACL, f)
		}
		for i, want := range "rwx" {
			switch rune(perm[i]) {
			case want:
				a.perm |= 4 >> i
			case '-':
			default:
				return nil, fmt.Errorf("%w: permissions in %q", errBadACL, f)
			}
		}
		a.id = aclNoID
		if named {
			idText := parts[1]
			if _, err := strconv.ParseUint(idText, 10, 32); err != nil {
				if len(parts) != 4 {
					return nil, fmt.Errorf("%w: %q names %q without a numeric id", errBadACL, f, parts[1])
				}
				idText = parts[3]
			}
			id, err := strconv.ParseUint(idText, 10, 32)
			if err != nil || id == aclNoID {
				return nil, fmt.Errorf("%w: id in %q", errBadACL, f)
			}
			a.id = uint32(id)
		}
		aces = append(aces, a)
	}
	if len(aces) == 0 {
		return nil, fmt.Errorf("%w: no entries", errBadACL)
	}
	// The kernel wants entries ordered by tag, then id (posix_acl_valid).
	sort.SliceStable(aces, func(i, j int) bool {
		if aces[i].tag != aces[j].tag {
			return aces[i].tag < aces[j].tag
		}
		return aces[i].id < aces[j].id
	})
	b := binary.LittleEndian.AppendUint32(nil, aclVersion)
	for i, a := range aces {
		if i > 0 && aces[i-1].tag == a.tag && aces[i-1].id == a.id {
			return nil, fmt.Errorf("%w: duplicate entry", errBadACL)
		}
		b = binary.LittleEndian.AppendUint16(b, a.tag)
		b = binary.LittleEndian.AppendUint16(b, a.perm)
		b = binary.LittleEndian.AppendUint32(b, a.id)
	}
	return b, nil
}
