package t1

import (
	"context"
	"testing"
)

// BenchmarkTransmit measures the host side. "host" answers from fixed
// blocks, so its allocations are Transmit's own (the response it
// returns); the loopback cases include the card side's.
func BenchmarkTransmit(b *testing.B) {
	ctx := context.Background()
	b.Run("host/short", func(b *testing.B) {
		var answers [2][]byte
		for seq := range answers {
			answers[seq] = appendBlock(nil, 0, byte(seq)<<6, []byte{0x12, 0x34, 0x90, 0x00}, false)
		}
		x := funcExchanger(func(_ context.Context, blk []byte, _ byte) ([]byte, error) {
			return answers[blk[1]>>6&1], nil
		})
		c := New(x, Config{})
		apdu := []byte{0x00, 0xB0, 0x00, 0x00, 0x02}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Transmit(ctx, apdu); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, tt := range []struct {
		name           string
		cmdLen, rspLen int
		ifs            int
	}{
		{"loopback/short", 5, 2, 32},
		{"loopback/600-1000-ifs32", 600, 1000, 32},
		{"loopback/600-1000-ifs254", 600, 1000, 254},
	} {
		b.Run(tt.name, func(b *testing.B) {
			f := newFixture(b, tt.rspLen, CardConfig{IFSC: tt.ifs}, Config{})
			if err := f.conn.NegotiateIFSD(ctx, tt.ifs); err != nil {
				b.Fatal(err)
			}
			f.loop.sent = nil
			cmd := pattern(tt.cmdLen, 1)
			b.ReportAllocs()
			b.SetBytes(int64(tt.cmdLen + tt.rspLen))
			for b.Loop() {
				f.app.commands = f.app.commands[:0]
				f.loop.sent = f.loop.sent[:0]
				if _, err := f.conn.Transmit(ctx, cmd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
