package trace

import (
	"strings"

	"github.com/wsrc-go/wsrc/card"
)

// SelectCards returns an Options.Select that picks the cards named in ids:
// each entry matches a card ID exactly, or an ICCID or EID regardless of
// case (an ICCID also with or without its trailing F pad). Empty entries
// are ignored; no entries at all select every card (nil).
func SelectCards(ids []string) func(cardID, iccid, eid string) bool {
	byID := make(map[string]bool)
	byIdent := make(map[string]bool)
	for _, s := range ids {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		byID[s] = true
		byIdent[card.NormalizeICCID(s)] = true
		byIdent[strings.ToLower(s)] = true
	}
	if len(byID) == 0 {
		return nil
	}
	return func(cardID, iccid, eid string) bool {
		return byID[cardID] ||
			iccid != "" && byIdent[card.NormalizeICCID(iccid)] ||
			eid != "" && byIdent[strings.ToLower(eid)]
	}
}
