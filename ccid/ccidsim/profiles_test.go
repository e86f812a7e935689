package ccidsim

import (
	"encoding/binary"
	"testing"

	"github.com/wsrc-go/wsrc/ccid"
)

// TestProfilesConsistent checks the profiles against themselves: the
// descriptor survives encoding, the rate list matches
// bNumDataRatesSupported, and the configuration descriptor holds one
// interface per CCID interface with the class descriptor in it.
func TestProfilesConsistent(t *testing.T) {
	for _, p := range append(Profiles(), CharacterLevel) {
		d, err := ccid.ParseDescriptor(p.Descriptor.Bytes())
		if err != nil || d != p.Descriptor {
			t.Errorf("%s: descriptor round trip: %v", p.Name, err)
		}
		stalls := p.DataRates == nil && p.VendorID == AU9560.VendorID && p.ProductID == AU9560.ProductID
		if len(p.DataRates) != int(p.Descriptor.NumDataRates) && !stalls {
			t.Errorf("%s: %d rates listed, descriptor says %d", p.Name, len(p.DataRates), p.Descriptor.NumDataRates)
		}
		cfg := p.configDescriptor()
		if int(binary.LittleEndian.Uint16(cfg[2:])) != len(cfg) || int(cfg[4]) != p.interfaces() {
			t.Errorf("%s: configuration header % X", p.Name, cfg[:9])
		}
		ifs, classes := 0, 0
		for off := 9; off < len(cfg); off += int(cfg[off]) {
			switch cfg[off+1] {
			case 4:
				ifs++
			case 0x21:
				classes++
			}
		}
		if ifs != p.interfaces() || classes != p.interfaces() {
			t.Errorf("%s: %d interfaces, %d class descriptors", p.Name, ifs, classes)
		}
	}
}
