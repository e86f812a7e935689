package ccidsim

import (
	"testing"
	"time"
)

// TestTransferTime checks the card timing against ISO 7816-3 arithmetic:
// at 4 MHz, TA1 11 is 10752 bit/s and TA1 96 is 250000 bit/s; a T=0
// character is 12 etu, a T=1 one 11.
func TestTransferTime(t *testing.T) {
	r := newReader(nil, SCR3310, "t", "t")
	s := r.Slot(0)
	s.cardTA1, s.cardProto = 0x11, 0
	if d := s.transferTime(100); d != 0 {
		t.Fatalf("timing off: %v, want 0", d)
	}
	r.SetCardTiming(true)
	for _, tt := range []struct {
		ta1   byte
		proto int
		want  time.Duration
	}{
		{0x11, 0, time.Duration(100 * 12 * int64(time.Second) / 10752)},
		{0x96, 0, time.Duration(100 * 12 * int64(time.Second) / 250000)},
		{0x96, 1, time.Duration(100 * 11 * int64(time.Second) / 250000)},
	} {
		s.cardTA1, s.cardProto = tt.ta1, tt.proto
		if d := s.transferTime(100); d != tt.want {
			t.Errorf("TA1 %02X T=%d: %v, want %v", tt.ta1, tt.proto, d, tt.want)
		}
	}
}
