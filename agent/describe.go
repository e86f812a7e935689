package agent

import (
	"context"
	"fmt"

	"github.com/wsrc-go/wsrc/card"
	"github.com/wsrc-go/wsrc/protocol"
)

// Describe probes every backend (Backend.Probe) and opens each present
// card once to fill in its ATR and identities (card.Identify: EID, ICCID,
// IMSI where no PIN guards it),
// for `wsrc-agent readers`. A card that cannot be opened or read gets Err;
// Describe itself never fails. Every card it opens is closed again.
func Describe(ctx context.Context, backends ...Backend) []BackendReport {
	reports := make([]BackendReport, 0, len(backends))
	for _, b := range backends {
		r := b.Probe(ctx)
		if r.Backend == "" {
			r.Backend = b.Name()
		}
		for i := range r.Readers {
			for j := range r.Readers[i].Slots {
				describeSlot(ctx, &r.Readers[i].Slots[j])
			}
		}
		reports = append(reports, r)
	}
	return reports
}

func describeSlot(ctx context.Context, s *SlotReport) {
	if !s.Present || s.Open == nil {
		return
	}
	octx, cancel := context.WithTimeout(ctx, OpenTimeout)
	defer cancel()
	c, err := s.Open(octx)
	if err != nil {
		s.Err = fmt.Sprintf("opening card: %v", err)
		return
	}
	defer c.Close()
	s.ATR = c.ATR()
	id, err := card.Identify(octx, c)
	s.Identities = map[string]string{}
	if id.EID != "" {
		s.Identities[protocol.IdentityEID] = id.EID
	}
	if id.ICCID != "" {
		s.Identities[protocol.IdentityICCID] = id.ICCID
	}
	if id.IMSI != "" {
		s.Identities[protocol.IdentityIMSI] = id.IMSI
	}
	if err != nil {
		s.Err = err.Error()
	}
}
