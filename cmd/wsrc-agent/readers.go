package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/wsrc-go/wsrc/agent"
	"github.com/wsrc-go/wsrc/protocol"
)

// printReaders writes the `wsrc-agent readers` table: one line per slot,
// or per reader that has none, with the card found in it, after a line for
// each backend that is not loaded (or has no readers). Readers a backend
// leaves out (e.g. excluded by a pattern) are listed with the reason.
func printReaders(ctx context.Context, w io.Writer, reports []agent.BackendReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tREADER\tSLOT\tSTATUS\tCARD")
	for _, b := range reports {
		if b.Status != agent.StatusLoaded || len(b.Readers) == 0 {
			status := b.Status.String()
			if b.Status == agent.StatusLoaded {
				status += " (no readers)"
			}
			fmt.Fprintf(tw, "%s\t-\t-\t%s\t%s\n", b.Backend, withReason(status, b.Reason), "")
		}
		for _, r := range b.Readers {
			name := r.Name
			if r.Details != "" {
				name += " (" + r.Details + ")"
			}
			status := withReason(r.Status.String(), r.Reason)
			if len(r.Slots) == 0 {
				fmt.Fprintf(tw, "%s\t%s\t-\t%s\t\n", b.Backend, name, status)
			}
			for _, s := range r.Slots {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", b.Backend, name, s.Index, status, describeCard(s))
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing reader list: %w", err)
	}
	return ctx.Err()
}

func withReason(status, reason string) string {
	if reason == "" {
		return status
	}
	return status + ": " + reason
}

// describeCard is the CARD column: "no card", or ATR and identities.
func describeCard(s agent.SlotReport) string {
	if !s.Present {
		return "no card"
	}
	var parts []string
	if s.ATR != nil {
		parts = append(parts, fmt.Sprintf("ATR %x", s.ATR))
	}
	for _, k := range []string{protocol.IdentityICCID, protocol.IdentityEID, protocol.IdentityIMSI} {
		if v := s.Identities[k]; v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	if s.Err != "" {
		parts = append(parts, "error: "+s.Err)
	}
	if len(parts) == 0 {
		return "card present"
	}
	return strings.Join(parts, "  ")
}
