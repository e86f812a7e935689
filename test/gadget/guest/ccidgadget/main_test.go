package main

import (
	"encoding/binary"
	"testing"

	"github.com/wsrc-go/wsrc/test/gadget/internal/lab"
)

// TestDescriptors: every lab profile gives a device descriptor with its
// VID:PID and a configuration whose endpoints all have dummy_udc files
// (two without an interrupt endpoint, three with).
func TestDescriptors(t *testing.T) {
	for _, p := range lab.Profiles {
		d := deviceDescriptor(p.Reader)
		if len(d) != 18 || binary.LittleEndian.Uint16(d[8:]) != p.Reader.VendorID || binary.LittleEndian.Uint16(d[10:]) != p.Reader.ProductID {
			t.Errorf("%s: device descriptor % X", p.Name, d)
		}
		eps, err := endpointConfigs(p.Reader.ConfigDescriptor(bulkIn, bulkOut, intIn))
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		want := 2
		if p.Reader.Interrupt {
			want = 3
		}
		if len(eps) != want {
			t.Errorf("%s: %d endpoints, want %d", p.Name, len(eps), want)
		}
	}
}
