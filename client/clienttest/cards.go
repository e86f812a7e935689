package clienttest

import (
	"context"
	"encoding/hex"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/card/sim"
	"github.com/wsrc-go/wsrc/protocol"
)

// FromCard offers c under the identities ids (which must hold its ATR):
// Transmit and Reset go to c, and its errors reach the user as `error`
// messages.
func FromCard(c card.Card, ids protocol.Identities) *Card {
	return &Card{
		Identities: ids,
		Transmit: func(command []byte) ([]byte, uint16, error) {
			r, err := c.Transmit(context.Background(), command)
			if err != nil {
				return nil, 0, err
			}
			return card.SplitResponse(r)
		},
		Reset: func() ([]byte, error) {
			return c.Reset(context.Background(), card.WarmReset)
		},
	}
}

// SimCard offers a simulated card (package card/sim) with the identities
// an identification of it finds.
func SimCard(cfg sim.Config) *Card {
	s := sim.New(cfg)
	id := s.Identity()
	ids := protocol.Identities{protocol.IdentityATR: hex.EncodeToString(s.ATR())}
	for k, v := range map[string]string{protocol.IdentityEID: id.EID, protocol.IdentityICCID: id.ICCID, protocol.IdentityIMSI: id.IMSI} {
		if v != "" {
			ids[k] = v
		}
	}
	return FromCard(s, ids)
}

// Identities of the eUICC in shared/protocol/transcript.md, which
// TranscriptCard simulates.
const (
	TranscriptATR   = "3b9f96801fc78031e073fe211b575352435653494da3"
	TranscriptEID   = sim.DefaultEID
	TranscriptICCID = sim.DefaultICCID
)

// TranscriptCard returns the card of shared/protocol/transcript.md: the
// default simulated eUICC of card/sim, which gives every APDU of that
// recording the recorded answer, listed from the recorded agent address.
// Each call returns a fresh card (nothing selected).
func TranscriptCard() *Card {
	c := SimCard(sim.Config{})
	c.Addr = protocol.RemoteAddr{IP: "127.0.0.1", Port: 37586}
	return c
}
