// Package ccid is the direct USB CCID driver: it finds smart card readers
// (USB interface class 0x0B, plus the vendor-class 0xFF readers that
// libccid's udev rules allow-list), claims them, and turns each card
// slot into a card.Card, so a Raspberry Pi with readers needs no pcscd.
//
// Data flow:
//
//	USB ─ usbio seam (gousb/libusb + netlink, or ccidsim) ─┐
//	  Driver: scans, claims, reports ReaderAdded/Removed   │
//	    reader: one per device, its CCID interfaces        │
//	      link: one per interface: bulk-in goroutine,      │
//	            shared bSeq, per-slot routes, Abort        │
//	        slot: power-up, ATR, PPS, exchange level       │
//	          slotCard (card.Card) ◄── agent (Event.Open)  │
//	      monitor: one per interface: NotifySlotChange or  │
//	               GetSlotStatus polling → CardInserted/Removed
//
// Everything above the seam is pure Go: the class descriptor (wherever
// it sits in the configuration), the bulk message codec, time extension
// and Abort, ATR parsing (package card/atr), speed negotiation (PPS
// and SetParameters when the reader does not do them itself, walking
// down on failure), T=0 TPDU mapping with GET RESPONSE and wrong-Le
// handling, T=1 through package ccid/t1, short and extended APDU
// exchanges with chaining, voltage selection, presence, hotplug, and
// typed errors. The gousb adapter (libusb.go, cgo only) and the netlink
// socket are the only parts tested outside unit tests (by the QEMU
// end-to-end test).
//
// Use Watch (or New, Driver.Run, Driver.Close) to follow readers and
// cards, and Readers for a one-shot listing. docs/ccid.md describes the
// design, the goroutines and who owns what, the reader profiles tested
// (package ccidsim) and what the driver refuses and why.
package ccid
